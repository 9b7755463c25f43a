// A tokenizer read from a Hugging Face `tokenizer.json`, giving the same ids as the `tokenizers`
// library for the two kinds our bundles use (anything else is refused with a clear error):
// - WordLevel with a Whitespace pre-tokenizer (\w+|[^\w\s]+) and a Lowercase normalizer (the
//   `tiny` preset's word tokenizer);
// - BERT WordPiece: BertNormalizer (clean text, CJK padding, strip accents, lowercase),
//   BertPreTokenizer, WordPiece with a "##" prefix and [UNK], as all-MiniLM-L6-v2 ships it.
// Both with TemplateProcessing (or BertProcessing) "[CLS] $A [SEP]", truncation to the right and
// fixed padding to max_length. Unicode properties, NFD and lowercase mapping come from ICU.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qk {

struct Encoding {
    std::vector<std::int64_t> ids;             // (max_length,)
    std::vector<std::int64_t> attention_mask;  // (max_length,) 1 for tokens, 0 for padding
    bool truncated = false;                    // the text had more tokens than fit
};

class Tokenizer {
public:
    // Throws BundleError for an unreadable file, an unsupported kind, or padding / truncation
    // that differ from `max_length` (when max_length > 0).
    static Tokenizer from_file(const std::string& path, int max_length);
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    // Throws InputError for text that is not valid UTF-8.
    Encoding encode(const std::string& text) const;
    // The tokens before truncation, padding and special tokens (for tests).
    std::vector<std::int64_t> model_ids(const std::string& text) const;
    int max_length() const;
    std::string kind() const;  // "wordlevel" | "wordpiece"

    struct Impl;

private:
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace qk
