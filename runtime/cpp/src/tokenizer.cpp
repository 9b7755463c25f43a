#include "tokenizer.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>

#include "qk/qk.hpp"

using nlohmann::json;

namespace qk {
namespace {

using U32 = std::u32string;

// ------------------------------------------------------------------ UTF-8

U32 decode_utf8(const std::string& s) {
    U32 out;
    out.reserve(s.size());
    std::size_t i = 0, n = s.size();
    auto bad = [&]() { return InputError("the text is not valid UTF-8 (bad byte at offset " + std::to_string(i) + ")"); };
    while (i < n) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        char32_t cp;
        int extra;
        if (c < 0x80) { cp = c; extra = 0; }
        else if ((c & 0xE0) == 0xC0) { cp = c & 0x1F; extra = 1; }
        else if ((c & 0xF0) == 0xE0) { cp = c & 0x0F; extra = 2; }
        else if ((c & 0xF8) == 0xF0) { cp = c & 0x07; extra = 3; }
        else throw bad();
        for (int k = 1; k <= extra; ++k) {
            if (i + k >= n) throw bad();
            unsigned char cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xC0) != 0x80) throw bad();
            cp = (cp << 6) | (cc & 0x3F);
        }
        // overlong forms, surrogates and values past U+10FFFF are not UTF-8
        if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            throw bad();
        out.push_back(cp);
        i += 1 + extra;
    }
    return out;
}

void append_utf8(std::string& out, char32_t c) {
    if (c < 0x80) {
        out += static_cast<char>(c);
    } else if (c < 0x800) {
        out += static_cast<char>(0xC0 | (c >> 6));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out += static_cast<char>(0xE0 | (c >> 12));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (c >> 18));
        out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    }
}

std::string encode_utf8(const char32_t* p, std::size_t n) {
    std::string out;
    out.reserve(n);
    for (std::size_t k = 0; k < n; ++k) append_utf8(out, p[k]);
    return out;
}

// ------------------------------------------------------------------ Unicode classes (as Rust / Oniguruma see them)

bool is_white_space(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE); }

// Rust's char::is_whitespace, plus \t \n \r (which it already includes)
bool bert_is_whitespace(char32_t c) { return c == U'\t' || c == U'\n' || c == U'\r' || is_white_space(c); }

// unicode_categories' is_other as tokenizers uses it (Cc, Cf, Co, Cs: unassigned code points stay), except \t \n \r, which count as whitespace
bool bert_is_control(char32_t c) {
    if (c == U'\t' || c == U'\n' || c == U'\r') return false;
    switch (u_charType(static_cast<UChar32>(c))) {
        case U_CONTROL_CHAR: case U_FORMAT_CHAR: case U_PRIVATE_USE_CHAR: case U_SURROGATE:
            return true;
        default:
            return false;
    }
}

bool is_punctuation_category(char32_t c) {
    switch (u_charType(static_cast<UChar32>(c))) {
        case U_DASH_PUNCTUATION: case U_START_PUNCTUATION: case U_END_PUNCTUATION: case U_CONNECTOR_PUNCTUATION:
        case U_OTHER_PUNCTUATION: case U_INITIAL_PUNCTUATION: case U_FINAL_PUNCTUATION:
            return true;
        default:
            return false;
    }
}

bool is_ascii_punctuation(char32_t c) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
}

bool bert_is_punc(char32_t c) { return is_ascii_punctuation(c) || is_punctuation_category(c); }

bool is_chinese_char(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// \w of the Whitespace pre-tokenizer's regex: letters (Alphabetic), marks, decimal digits,
// connector punctuation, join controls.
bool is_word_char(char32_t c) {
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    UChar32 u = static_cast<UChar32>(c);
    if (u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL)) return true;
    switch (u_charType(u)) {
        case U_NON_SPACING_MARK: case U_ENCLOSING_MARK: case U_COMBINING_SPACING_MARK: case U_DECIMAL_DIGIT_NUMBER:
        case U_CONNECTOR_PUNCTUATION:
            return true;
        default:
            return false;
    }
}

// Rust's char::to_lowercase (full mapping, no context: a lone capital sigma becomes σ)
void append_lower(U32& out, char32_t c) {
    if (c < 0x80) {
        out.push_back((c >= 'A' && c <= 'Z') ? c + 32 : c);
        return;
    }
    UChar src[2];
    int32_t len = 0;
    U16_APPEND_UNSAFE(src, len, static_cast<UChar32>(c));
    UChar dst[8];
    UErrorCode status = U_ZERO_ERROR;
    int32_t n = u_strToLower(dst, 8, src, len, "", &status);
    if (U_FAILURE(status) || n > 8) {
        out.push_back(c);
        return;
    }
    for (int32_t k = 0; k < n;) {
        UChar32 cp;
        U16_NEXT(dst, k, n, cp);
        out.push_back(static_cast<char32_t>(cp));
    }
}

U32 nfd(const U32& s) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFDInstance(status);
    if (U_FAILURE(status)) throw Error(ErrorCode::Internal, "ICU has no NFD normalizer");
    icu::UnicodeString in = icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(s.data()), static_cast<int32_t>(s.size()));
    icu::UnicodeString out = n->normalize(in, status);
    if (U_FAILURE(status)) throw Error(ErrorCode::Internal, "ICU NFD normalization failed");
    U32 r(static_cast<std::size_t>(out.countChar32()), U'\0');
    UErrorCode st2 = U_ZERO_ERROR;
    out.toUTF32(reinterpret_cast<UChar32*>(&r[0]), static_cast<int32_t>(r.size()), st2);
    return r;
}

// ------------------------------------------------------------------ configuration

struct NormStep {
    enum Kind { Lowercase, Bert } kind = Lowercase;
    bool clean_text = true, handle_chinese = true, strip_accents = true, lowercase = true;
};

struct AddedToken {
    U32 content;
    std::int64_t id;
};

std::string dump(const json& j) { return j.dump(); }

}  // namespace

struct Tokenizer::Impl {
    std::string path;
    enum Model { WordLevel, WordPiece } model = WordLevel;
    enum Pre { Whitespace, BertPre } pre = Whitespace;
    std::vector<NormStep> normalizers;
    std::unordered_map<std::string, std::int64_t> vocab;
    std::string unk_token;
    std::string prefix = "##";
    std::size_t max_chars = 100;
    std::vector<AddedToken> added;      // longest first
    std::vector<std::int64_t> before;   // special ids before $A
    std::vector<std::int64_t> after;    // special ids after $A
    int max_length = 0;
    std::int64_t pad_id = 0;

    [[noreturn]] void refuse(const std::string& what) const {
        throw BundleError(path + ": " + what + "; the C++ runtime reads WordLevel + Whitespace + Lowercase and BERT "
                          "WordPiece tokenizers only (re-export the bundle with one of those, or use the Python runtime)");
    }

    void add_normalizer(const json& n) {
        if (n.is_null()) return;
        std::string type = n.value("type", "");
        if (type == "Lowercase") {
            normalizers.push_back(NormStep{NormStep::Lowercase});
        } else if (type == "BertNormalizer") {
            NormStep s{NormStep::Bert};
            s.clean_text = n.value("clean_text", true);
            s.handle_chinese = n.value("handle_chinese_chars", true);
            s.lowercase = n.value("lowercase", true);
            const json& sa = n.value("strip_accents", json());
            s.strip_accents = sa.is_boolean() ? sa.get<bool>() : s.lowercase;  // null: follows lowercase
            normalizers.push_back(s);
        } else if (type == "Sequence") {
            for (const auto& sub : n.value("normalizers", json::array())) add_normalizer(sub);
        } else {
            refuse("normalizer " + dump(n) + " is not supported");
        }
    }

    U32 normalize(U32 s) const {
        for (const auto& step : normalizers) {
            if (step.kind == NormStep::Lowercase) {
                U32 out;
                for (char32_t c : s) append_lower(out, c);
                s.swap(out);
                continue;
            }
            if (step.clean_text) {
                U32 out;
                for (char32_t c : s) {
                    if (c == 0 || c == 0xFFFD || bert_is_control(c)) continue;
                    out.push_back(bert_is_whitespace(c) ? U' ' : c);
                }
                s.swap(out);
            }
            if (step.handle_chinese) {
                U32 out;
                for (char32_t c : s) {
                    if (is_chinese_char(c)) {
                        out.push_back(U' ');
                        out.push_back(c);
                        out.push_back(U' ');
                    } else {
                        out.push_back(c);
                    }
                }
                s.swap(out);
            }
            if (step.strip_accents) {
                U32 d = nfd(s), out;
                for (char32_t c : d)
                    if (u_charType(static_cast<UChar32>(c)) != U_NON_SPACING_MARK) out.push_back(c);
                s.swap(out);
            }
            if (step.lowercase) {
                U32 out;
                for (char32_t c : s) append_lower(out, c);
                s.swap(out);
            }
        }
        return s;
    }

    std::vector<U32> pre_tokenize(const U32& s) const {
        std::vector<U32> words;
        if (pre == Whitespace) {  // the matches of \w+|[^\w\s]+
            std::size_t i = 0;
            while (i < s.size()) {
                if (is_white_space(s[i])) {
                    ++i;
                    continue;
                }
                bool word = is_word_char(s[i]);
                std::size_t j = i + 1;
                while (j < s.size() && !is_white_space(s[j]) && is_word_char(s[j]) == word) ++j;
                words.emplace_back(s.substr(i, j - i));
                i = j;
            }
            return words;
        }
        // BertPreTokenizer: split on whitespace (removed), then isolate each punctuation character
        U32 cur;
        auto flush = [&]() {
            if (!cur.empty()) words.push_back(cur);
            cur.clear();
        };
        for (char32_t c : s) {
            if (is_white_space(c)) {
                flush();
            } else if (bert_is_punc(c)) {
                flush();
                words.push_back(U32(1, c));
            } else {
                cur.push_back(c);
            }
        }
        flush();
        return words;
    }

    std::int64_t unk_id() const {
        auto it = vocab.find(unk_token);
        if (it == vocab.end()) throw InputError(path + ": the text has a word outside the vocabulary and the tokenizer has no unk token");
        return it->second;
    }

    void model_tokens(const U32& word, std::vector<std::int64_t>& ids) const {
        if (model == WordLevel) {
            auto it = vocab.find(encode_utf8(word.data(), word.size()));
            ids.push_back(it != vocab.end() ? it->second : unk_id());
            return;
        }
        if (word.size() > max_chars) {
            ids.push_back(unk_id());
            return;
        }
        std::vector<std::int64_t> pieces;
        std::size_t start = 0;
        std::string key;
        while (start < word.size()) {
            std::size_t end = word.size();
            bool found = false;
            while (start < end) {
                key.clear();
                if (start > 0) key = prefix;
                key += encode_utf8(word.data() + start, end - start);
                auto it = vocab.find(key);
                if (it != vocab.end()) {
                    pieces.push_back(it->second);
                    found = true;
                    break;
                }
                --end;
            }
            if (!found) {
                ids.push_back(unk_id());
                return;
            }
            start = end;
        }
        ids.insert(ids.end(), pieces.begin(), pieces.end());
    }

    void encode_plain(const U32& piece, std::vector<std::int64_t>& ids) const {
        for (const U32& w : pre_tokenize(normalize(piece))) model_tokens(w, ids);
    }

    std::vector<std::int64_t> content_ids(const std::string& text) const {
        U32 s = decode_utf8(text);
        std::vector<std::int64_t> ids;
        // added tokens are matched first, on the raw text (leftmost, then longest)
        std::size_t i = 0, start = 0;
        while (i < s.size() && !added.empty()) {
            const AddedToken* hit = nullptr;
            for (const auto& t : added)  // longest first
                if (!t.content.empty() && s.compare(i, t.content.size(), t.content) == 0) {
                    hit = &t;
                    break;
                }
            if (!hit) {
                ++i;
                continue;
            }
            encode_plain(s.substr(start, i - start), ids);
            ids.push_back(hit->id);
            i += hit->content.size();
            start = i;
        }
        encode_plain(s.substr(start), ids);
        return ids;
    }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

int Tokenizer::max_length() const { return impl_->max_length; }
std::string Tokenizer::kind() const { return impl_->model == Impl::WordLevel ? "wordlevel" : "wordpiece"; }

Tokenizer Tokenizer::from_file(const std::string& path, int max_length) {
    auto impl = std::make_unique<Impl>();
    impl->path = path;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw BundleError("cannot read the tokenizer file " + path + "; re-export the bundle");
    std::stringstream ss;
    ss << in.rdbuf();
    json t;
    try {
        t = json::parse(ss.str());
    } catch (const json::exception& e) {
        throw BundleError(path + " is not a tokenizers file (" + std::string(e.what()) + "); re-export the bundle");
    }
    if (!t.is_object() || !t.contains("model") || !t["model"].is_object()) impl->refuse("no 'model' object");
    try {
        const json& m = t["model"];
        std::string type = m.value("type", "");
        if (type == "WordLevel") {
            impl->model = Impl::WordLevel;
        } else if (type == "WordPiece") {
            impl->model = Impl::WordPiece;
            impl->prefix = m.value("continuing_subword_prefix", std::string("##"));
            impl->max_chars = m.value("max_input_chars_per_word", 100);
        } else {
            impl->refuse("model type '" + type + "' is not supported");
        }
        for (const auto& [k, v] : m.at("vocab").items()) impl->vocab[k] = v.get<std::int64_t>();
        impl->unk_token = m.value("unk_token", std::string("[UNK]"));

        impl->add_normalizer(t.value("normalizer", json()));
        const json& pre = t.value("pre_tokenizer", json());
        std::string pre_type = pre.is_object() ? pre.value("type", "") : "";
        if (pre_type == "Whitespace")
            impl->pre = Impl::Whitespace;
        else if (pre_type == "BertPreTokenizer")
            impl->pre = Impl::BertPre;
        else
            impl->refuse("pre_tokenizer " + dump(pre) + " is not supported");

        for (const auto& a : t.value("added_tokens", json::array())) {
            if (a.value("normalized", false) || a.value("lstrip", false) || a.value("rstrip", false) ||
                a.value("single_word", false))
                impl->refuse("added token " + dump(a) + " uses normalized / lstrip / rstrip / single_word matching");
            impl->added.push_back(AddedToken{decode_utf8(a.at("content").get<std::string>()), a.at("id").get<std::int64_t>()});
        }
        std::stable_sort(impl->added.begin(), impl->added.end(),
                         [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });

        const json& post = t.value("post_processor", json());
        if (!post.is_null()) {
            std::string pt = post.value("type", "");
            if (pt == "TemplateProcessing") {
                bool seen_a = false;
                for (const auto& item : post.at("single")) {
                    if (item.contains("Sequence")) {
                        if (seen_a) impl->refuse("a template with $A twice");
                        seen_a = true;
                    } else if (item.contains("SpecialToken")) {
                        std::string id = item["SpecialToken"].at("id");
                        const json& ids = post.at("special_tokens").at(id).at("ids");
                        auto& dst = seen_a ? impl->after : impl->before;
                        for (const auto& v : ids) dst.push_back(v.get<std::int64_t>());
                    } else {
                        impl->refuse("template item " + dump(item) + " is not supported");
                    }
                }
                if (!seen_a) impl->refuse("a template without $A");
            } else if (pt == "BertProcessing") {
                impl->before.push_back(post.at("cls").at(1).get<std::int64_t>());
                impl->after.push_back(post.at("sep").at(1).get<std::int64_t>());
            } else {
                impl->refuse("post_processor type '" + pt + "' is not supported");
            }
        }

        const json& trunc = t.value("truncation", json());
        const json& pad = t.value("padding", json());
        int trunc_len = -1, pad_len = -1;
        if (trunc.is_object()) {
            trunc_len = trunc.at("max_length").get<int>();
            if (trunc.value("direction", std::string("Right")) != "Right" || trunc.value("stride", 0) != 0)
                impl->refuse("truncation " + dump(trunc) + " (only to the right, stride 0, is supported)");
        }
        if (pad.is_object()) {
            const json& strat = pad.value("strategy", json());
            if (strat.is_object() && strat.contains("Fixed")) pad_len = strat["Fixed"].get<int>();
            if (pad.value("direction", std::string("Right")) != "Right")
                impl->refuse("padding " + dump(pad) + " (only to the right is supported)");
            impl->pad_id = pad.value("pad_id", 0);
        }
        if (max_length > 0 && (trunc_len != max_length || pad_len != max_length))
            throw BundleError(path + " must pad and truncate to max_length " + std::to_string(max_length) + " (has padding " +
                              dump(pad) + ", truncation " + dump(trunc) + "); re-export the bundle");
        impl->max_length = max_length > 0 ? max_length : std::max(trunc_len, pad_len);
        if (impl->max_length <= 0) impl->refuse("no fixed padding / truncation length");
    } catch (const json::exception& e) {
        throw BundleError(path + " is not a tokenizers file the runtime can read (" + std::string(e.what()) + "); re-export the bundle");
    }
    return Tokenizer(std::move(impl));
}

std::vector<std::int64_t> Tokenizer::model_ids(const std::string& text) const { return impl_->content_ids(text); }

Encoding Tokenizer::encode(const std::string& text) const {
    const Impl& t = *impl_;
    std::vector<std::int64_t> ids = t.content_ids(text);
    std::size_t L = static_cast<std::size_t>(t.max_length);
    std::size_t specials = t.before.size() + t.after.size();
    std::size_t room = L > specials ? L - specials : 0;
    Encoding e;
    if (ids.size() > room) {
        ids.resize(room);
        e.truncated = true;
    }
    e.ids.reserve(L);
    e.ids.insert(e.ids.end(), t.before.begin(), t.before.end());
    e.ids.insert(e.ids.end(), ids.begin(), ids.end());
    e.ids.insert(e.ids.end(), t.after.begin(), t.after.end());
    if (e.ids.size() > L) e.ids.resize(L);
    e.attention_mask.assign(e.ids.size(), 1);
    e.ids.resize(L, t.pad_id);
    e.attention_mask.resize(L, 0);
    return e;
}

// Python's `not text.strip()`: empty, or only characters str.isspace() accepts.
bool is_blank_text(const std::string& utf8) {
    for (char32_t c : decode_utf8(utf8))
        if (!(is_white_space(c) || (c >= 0x1C && c <= 0x1F))) return false;
    return true;
}

// inputs.py check_text: a character outside the control, format, surrogate, private-use,
// unassigned and separator categories (zero-width characters are format characters)
bool has_visible_text(const std::string& utf8) {
    for (char32_t c : decode_utf8(utf8)) {
        switch (u_charType(static_cast<UChar32>(c))) {
            case U_CONTROL_CHAR: case U_FORMAT_CHAR: case U_SURROGATE: case U_PRIVATE_USE_CHAR: case U_UNASSIGNED:
            case U_SPACE_SEPARATOR: case U_LINE_SEPARATOR: case U_PARAGRAPH_SEPARATOR:
                continue;
            default:
                return true;
        }
    }
    return false;
}

}  // namespace qk
