# FindTensorRT: NVIDIA TensorRT's NvInfer.h and libnvinfer, plus the CUDA runtime it needs.
#
# Hints: TensorRT_ROOT (cache variable or environment), e.g. the unpacked TensorRT tarball.
# Defines: TensorRT_FOUND, TensorRT_VERSION, the imported target TensorRT::nvinfer (which also
# brings CUDA::cudart).
find_path(TensorRT_INCLUDE_DIR NvInfer.h
    HINTS ${TensorRT_ROOT} ENV TensorRT_ROOT
    PATH_SUFFIXES include include/x86_64-linux-gnu include/aarch64-linux-gnu)
find_library(TensorRT_LIBRARY NAMES nvinfer
    HINTS ${TensorRT_ROOT} ENV TensorRT_ROOT
    PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu lib/aarch64-linux-gnu)

if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
    # TensorRT 10: NV_TENSORRT_MAJOR 10; TensorRT 10.11+ and 11: TRT_MAJOR_ENTERPRISE 11
    foreach(_part MAJOR MINOR PATCH)
        file(STRINGS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _qk_line
             REGEX "^#define (NV_TENSORRT_${_part}|TRT_${_part}_ENTERPRISE) [0-9]+")
        if(_qk_line)
            list(GET _qk_line 0 _qk_line)
            string(REGEX REPLACE "^#define [A-Z_]+ ([0-9]+).*" "\\1" _qk_${_part} "${_qk_line}")
        endif()
    endforeach()
    set(TensorRT_VERSION "${_qk_MAJOR}.${_qk_MINOR}.${_qk_PATCH}")
endif()

set(_qk_cuda_found FALSE)
if(TensorRT_INCLUDE_DIR AND TensorRT_LIBRARY)
    find_package(CUDAToolkit QUIET)
    set(_qk_cuda_found ${CUDAToolkit_FOUND})
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
    REQUIRED_VARS TensorRT_LIBRARY TensorRT_INCLUDE_DIR _qk_cuda_found
    VERSION_VAR TensorRT_VERSION)

if(TensorRT_FOUND AND NOT TARGET TensorRT::nvinfer)
    add_library(TensorRT::nvinfer SHARED IMPORTED)
    set_target_properties(TensorRT::nvinfer PROPERTIES
        IMPORTED_LOCATION "${TensorRT_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}"
        INTERFACE_LINK_LIBRARIES CUDA::cudart)
endif()
mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_LIBRARY)
