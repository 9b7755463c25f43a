// SHA-256 (FIPS 180-4), written here so the runtime needs no crypto library for bundle hashes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace qk {

class Sha256 {
public:
    Sha256();
    void update(const void* data, std::size_t size);
    std::array<std::uint8_t, 32> digest();  // finishes; the object must not be updated after
    std::string hexdigest();

private:
    void block(const std::uint8_t* p);
    std::uint32_t h_[8];
    std::uint8_t buf_[64];
    std::size_t used_ = 0;
    std::uint64_t bytes_ = 0;
};

std::string sha256_hex(const std::string& data);
// Throws BundleError when the file cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace qk
