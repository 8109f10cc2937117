// Seed inputs for the fuzz targets, built in code so that they are reproducible: valid files of each
// kind, and the hostile inputs of issue 21 (deep JSON, huge shapes, image bombs, truncated files) as
// regression cases. `make fuzz-corpus` writes them to fuzz/corpus/<target>/<name>; a test checks that
// the checked-in corpus matches.
#pragma once
#include <string>
#include <vector>

namespace df::fuzz {

struct Seed {
  std::string target;     // a Target name (fuzz/targets.h)
  std::string name;       // file name in the corpus folder
  std::string bytes;
  bool hostile;           // a regression input: must end in a df::Error, not load
};

const std::vector<Seed>& seeds();
const Seed& seed(const std::string& target, const std::string& name);

// Image and file builders the seeds use, also used by the tests.
std::string png_bytes(int w, int h, int comp, const std::vector<unsigned char>& px);
std::string jpg_bytes(int w, int h, int comp, const std::vector<unsigned char>& px);
std::string bmp_bytes(int w, int h, const std::vector<unsigned char>& rgb);            // bottom-up, 24-bit (stb)
std::string bmp_top_down_bytes(int w, int h, const std::vector<unsigned char>& rgb);   // negative height
std::string ppm_bytes(int w, int h, int comp, const std::vector<unsigned char>& px);   // P6 (3) or P5 (1)
std::string gzip_bytes(const std::string& data);
std::string safetensors_bytes(const std::string& header, const std::string& data);    // length field + header
std::string nested_json(int levels);                                                  // [[[...]]]

}  // namespace df::fuzz
