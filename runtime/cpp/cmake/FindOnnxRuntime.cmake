# FindOnnxRuntime: ONNX Runtime's C/C++ headers and its shared library.
#
# Hints (cache variables or environment): OnnxRuntime_ROOT, OnnxRuntime_INCLUDE_DIR (the folder
# holding onnxruntime_cxx_api.h), OnnxRuntime_LIBRARY (libonnxruntime.so).
# Defines: OnnxRuntime_FOUND, OnnxRuntime_VERSION (the headers' C API version, e.g. 21),
# and the imported target OnnxRuntime::OnnxRuntime.
find_path(OnnxRuntime_INCLUDE_DIR onnxruntime_cxx_api.h
    HINTS ${OnnxRuntime_ROOT} ENV OnnxRuntime_ROOT
    PATH_SUFFIXES include/onnxruntime include onnxruntime)
find_library(OnnxRuntime_LIBRARY NAMES onnxruntime
    HINTS ${OnnxRuntime_ROOT} ENV OnnxRuntime_ROOT
    PATH_SUFFIXES lib lib64)

if(OnnxRuntime_INCLUDE_DIR AND EXISTS "${OnnxRuntime_INCLUDE_DIR}/onnxruntime_c_api.h")
    file(STRINGS "${OnnxRuntime_INCLUDE_DIR}/onnxruntime_c_api.h" _qk_ort_api REGEX "^#define ORT_API_VERSION [0-9]+")
    string(REGEX REPLACE "^#define ORT_API_VERSION ([0-9]+).*" "\\1" OnnxRuntime_VERSION "${_qk_ort_api}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OnnxRuntime
    REQUIRED_VARS OnnxRuntime_LIBRARY OnnxRuntime_INCLUDE_DIR
    VERSION_VAR OnnxRuntime_VERSION)

if(OnnxRuntime_FOUND AND NOT TARGET OnnxRuntime::OnnxRuntime)
    add_library(OnnxRuntime::OnnxRuntime SHARED IMPORTED)
    set_target_properties(OnnxRuntime::OnnxRuntime PROPERTIES
        IMPORTED_LOCATION "${OnnxRuntime_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${OnnxRuntime_INCLUDE_DIR}")
endif()
mark_as_advanced(OnnxRuntime_INCLUDE_DIR OnnxRuntime_LIBRARY)
