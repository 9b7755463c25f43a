// The edit session: the Python runtime's EditSession._edit (runtime/session.py), step for step.
//
// 1. the image goes to the model's side (Pillow-exact bilinear), to [-1, 1], through the image
//    encoder; the box (scaled with the image, rounding outwards) becomes a pixel mask,
//    max-pooled to latent resolution;
// 2. the instruction and the empty string are encoded (the empty string once per session, each
//    at batch 1); the gateway makes kontext tokens for three guidance branches: text+image,
//    image only (empty text), neither (empty text, zero source and region, flags 0); with image
//    guidance exactly 1 the last has weight 0 and is not run (two branches);
// 3. the CMG runs once on the first branch; its gate thresholded at gate_threshold is the active
//    region m, repeated over each token's patch; decoder_cond (format 3) turns the branches' text,
//    kontext and flags into what every step reads (each block's cross-attention keys and values);
// 4. each step runs the decoder (its velocity already gated with m) on the branches, combines
//    v = v_uu + s_img (v_ui - v_uu) + s_txt (v_ti - v_ui) (v = v_ui + s_txt (v_ti - v_ui) with two
//    branches) in float32 and takes an Euler step; sparse "region" runs the region decoder on
//    the active tokens plus a halo; a bundle with `few_step` (format 5) feeds the decoder
//    `step_size` too: at the step counts it lists the sigmas are uniform, (n - k) / n, and
//    step_size = sigma - sigma_next, at any other count the ordinary schedule and step_size 0;
// 5. the image decoder decodes; outside m (nearest-upsampled to pixels) the source's pixels
//    are kept; with the bundle's compositing "changed" (manifest `composite`, format 4) the image
//    decoder also decodes the source latent, and inside m too the source's pixels are kept where
//    the two decodings agree (runtime/composite.py: weight from the mean RGB difference, lo / hi,
//    `widen` 3 x 3 max filters); uint8 = round_half_even((clamp(x, -1, 1) + 1) * 127.5); resized back.
// The initial noise is noise.cpp's portable_normal(seed, (1, C, h, w)), as in every runtime.
//
// Every tensor the graphs read or write is allocated when the session opens, and each graph is
// bound to its tensors once (the region decoder once per bucket size; the two-branch set on
// first use): an edit fills buffers and runs prepared calls, and the denoising loop allocates
// nothing.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <numeric>
#include <thread>

#include "backend.hpp"
#include "bundle.hpp"
#include "noise.hpp"
#include "qk/qk.hpp"
#include "sampler.hpp"
#include "tokenizer.hpp"

namespace qk {

bool is_blank_text(const std::string& utf8);  // tokenizer.cpp
bool has_visible_text(const std::string& utf8);  // tokenizer.cpp

namespace {

constexpr int kMaxSteps = 1000;
constexpr long long kMaxPixels = 64LL * 1024 * 1024;

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

std::string box_str(const Box& b) {
    return "(" + std::to_string(b.x0) + ", " + std::to_string(b.y0) + ", " + std::to_string(b.x1) + ", " + std::to_string(b.y1) + ")";
}

Box check_box(const Box& b, int width, int height) {
    std::string rule = "need integers 0 <= x0 < x1 <= " + std::to_string(width) + " and 0 <= y0 < y1 <= " +
                       std::to_string(height) + " (x1, y1 exclusive, in the input image's pixels)";
    if (!(0 <= b.x0 && b.x0 < b.x1 && b.x1 <= width && 0 <= b.y0 && b.y0 < b.y1 && b.y1 <= height)) {
        const char* what = (b.x1 <= b.x0 || b.y1 <= b.y0) ? "inverted or empty" : "outside the image";
        throw InputError("box " + box_str(b) + " is " + what + " for a " + std::to_string(width) + "x" +
                         std::to_string(height) + " image; " + rule);
    }
    return b;
}

// inputs.py scale_box: a valid box in a width x height image -> the box in the side x side image
Box scale_box(const Box& b, int width, int height, int side) {
    if (width == side && height == side) return b;
    double sx = static_cast<double>(side) / width, sy = static_cast<double>(side) / height;
    Box o;
    o.x0 = static_cast<int>(std::floor(b.x0 * sx));
    o.y0 = static_cast<int>(std::floor(b.y0 * sy));
    o.x1 = std::max(static_cast<int>(std::ceil(b.x1 * sx)), o.x0 + 1);
    o.y1 = std::max(static_cast<int>(std::ceil(b.y1 * sy)), o.y0 + 1);
    return o;
}

int bucket_size(int count, int total, const std::vector<double>& fractions) {
    for (double frac : fractions) {
        int size = static_cast<int>(std::nearbyint(total * frac));  // Python's round: half to even
        if (count <= size) return size;
    }
    return total;
}

// session.py active_token_indices: active tokens, every token within `halo` (Chebyshev), then
// the nearest others (ties by index) up to a bucket size; sorted.
std::vector<std::int64_t> active_token_indices(const std::vector<bool>& active, int g, int halo,
                                               const std::vector<double>& fractions) {
    const int n = g * g;
    std::vector<int> on;
    for (int k = 0; k < n; ++k)
        if (active[static_cast<std::size_t>(k)]) on.push_back(k);
    std::vector<int> dist(static_cast<std::size_t>(n), 0);
    int wanted = 0;
    if (!on.empty()) {
        for (int k = 0; k < n; ++k) {
            int best = 1 << 30;
            for (int a : on) best = std::min(best, std::max(std::abs(k / g - a / g), std::abs(k % g - a % g)));
            dist[static_cast<std::size_t>(k)] = best;
            if (best <= halo) ++wanted;
        }
    }
    int size = bucket_size(std::max(wanted, 1), n, fractions);
    std::vector<int> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return dist[static_cast<std::size_t>(a)] < dist[static_cast<std::size_t>(b)]; });
    std::vector<std::int64_t> idx(order.begin(), order.begin() + size);
    std::sort(idx.begin(), idx.end());
    return idx;
}

}  // namespace

struct Session::Impl {
    Bundle bundle;
    Tokenizer tokenizer;
    SessionOptions options;
    std::unique_ptr<Backend> backend;
    FlowMatchEuler sched;
    double open_ms = 0.0;
    std::mutex mutex;

    int S, C, h, p, g, L, Wt, K, D, N;

    // text encoder (batch 1)
    Tensor ids, amask, hidden;
    // image encoder / decoder (batch 1); src_dec_image: the decoder's output for the source latent
    Tensor image, latent, dec_latent, dec_image, src_dec_image;
    // CMG (batch 1)
    Tensor c_kontext, c_source, c_region, gate;
    // region decoder: one `active` tensor and bound call per bucket size
    struct RegionCall {
        std::unique_ptr<Tensor> active;
        std::unique_ptr<PreparedCall> call;
    };
    // gateway and decoders at batch nb: text+image, image only[, neither]; 3 branches, or 2
    // where image guidance is 1
    struct Branches {
        int nb = 3;
        Tensor text, text_mask, source, region, flags, kontext, x, sigma, gate_map, velocity;
        Tensor step_size;  // the decoders' step size (format 5's few_step; unbound without it)
        Tensor cond_kv, cond_bias, cond_emb;  // decoder_cond's outputs, the steps' inputs (format 3)
        std::unique_ptr<PreparedCall> gateway, decoder_cond, decoder;
        std::map<int, RegionCall> region_calls;
    };
    std::unique_ptr<Branches> branch_sets[2];  // [0]: 2 branches, [1]: 3
    // text encoder on fewer than L tokens (bundle format 2: dynamic token axis): one set of
    // tensors and bound call per token count, made on first use
    struct TextCall {
        std::unique_ptr<Tensor> ids, amask, hidden;
        std::unique_ptr<PreparedCall> call;
    };
    std::map<int, TextCall> text_calls;
    bool text_dynamic = false;
    std::unique_ptr<PreparedCall> c_text, c_image_encoder, c_image_decoder, c_source_decoder, c_cmg;

    bool have_empty = false;
    std::vector<float> empty_hidden, empty_mask;
    std::vector<float> x1, v1, src_px, pix, change_w, change_tmp;  // work buffers

    Impl(const std::string& dir, const SessionOptions& opts)
        : bundle(open_bundle(dir, opts.verify)),
          tokenizer(load_tokenizer(bundle)),
          options(opts),
          sched(bundle.sampler.shift) {
        const Dims& d = bundle.dims;
        S = d.image_size; C = d.latent_channels; h = d.latent_size(); p = d.patch; g = d.grid();
        L = d.max_length; Wt = d.text_width; K = d.kontext_tokens; D = d.width; N = d.tokens();
        using V = std::vector<std::int64_t>;
        ids = Tensor("input_ids", DType::I64, V{1, L});
        amask = Tensor("attention_mask", DType::I64, V{1, L});
        hidden = Tensor("hidden", DType::F32, V{1, L, Wt});
        image = Tensor("image", DType::F32, V{1, 3, S, S});
        latent = Tensor("latent", DType::F32, V{1, C, h, h});
        dec_latent = Tensor("latent", DType::F32, V{1, C, h, h});
        dec_image = Tensor("image", DType::F32, V{1, 3, S, S});
        c_kontext = Tensor("kontext", DType::F32, V{1, K, D});
        c_source = Tensor("source", DType::F32, V{1, C, h, h});
        c_region = Tensor("region", DType::F32, V{1, 1, h, h});
        gate = Tensor("gate", DType::F32, V{1, N});
        x1.assign(static_cast<std::size_t>(C) * h * h, 0.0f);
        v1.assign(x1.size(), 0.0f);
        src_px.assign(static_cast<std::size_t>(3) * S * S, 0.0f);
        pix.assign(static_cast<std::size_t>(S) * S, 1.0f);

        auto t0 = Clock::now();
        backend = make_backend(bundle, options);
        // bind now what an edit with the default settings runs; the other decoder binds on first use
        c_text = bind("text_encoder", {&ids, &amask}, {&hidden});
        text_dynamic = !bundle.graph("text_encoder").inputs[0].shape[1].axis.empty();
        c_image_encoder = bind("image_encoder", {&image}, {&latent});
        c_image_decoder = bind("image_decoder", {&dec_latent}, {&dec_image});
        if (bundle.has_cmg()) c_cmg = bind("cmg", {&c_kontext, &c_source, &c_region}, {&gate});
        if (bundle.has_cmg() && bundle.composite.decodes_source()) {  // the decoder again, on the encoder's latent
            src_dec_image = Tensor("image", DType::F32, V{1, 3, S, S});
            c_source_decoder = bind("image_decoder", {&latent}, {&src_dec_image});
            change_w.assign(static_cast<std::size_t>(S) * S, 0.0f);
            change_tmp.assign(change_w.size(), 0.0f);
        }
        branches(edit_branches(bundle.sampler.image_guidance));  // the default edit's set
        if (bundle.has_region()) backend->load(bundle.graph("decoder_region"));
        open_ms = ms_since(t0);
    }

    // composite.py change_weight: decoded and decoded source (3, S, S) -> change_w (S, S), in float32
    // in numpy's order: d = (|a_r - b_r| + |a_g - b_g| + |a_b - b_b|) / 6, w = clip((d - lo) / (hi - lo), 0, 1),
    // then `widen` 3 x 3 max filters (rows, then columns; pixels outside the image do not count)
    void change_weight(const float* a, const float* b) {
        const Composite& c = bundle.composite;
        const std::size_t ss = static_cast<std::size_t>(S) * S;
        const float lo = static_cast<float>(c.lo), range = static_cast<float>(c.hi - c.lo);
        for (std::size_t k = 0; k < ss; ++k) {
            float d = std::fabs(a[k] - b[k]) + std::fabs(a[ss + k] - b[ss + k]);
            d = d + std::fabs(a[2 * ss + k] - b[2 * ss + k]);
            d = d / 6.0f;
            float w = (d - lo) / range;
            change_w[k] = std::min(std::max(w, 0.0f), 1.0f);
        }
        for (int pass = 0; pass < c.widen; ++pass) {
            for (int y = 0; y < S; ++y)
                for (int xx = 0; xx < S; ++xx) {
                    float m = change_w[static_cast<std::size_t>(y) * S + xx];
                    if (y > 0) m = std::max(m, change_w[static_cast<std::size_t>(y - 1) * S + xx]);
                    if (y + 1 < S) m = std::max(m, change_w[static_cast<std::size_t>(y + 1) * S + xx]);
                    change_tmp[static_cast<std::size_t>(y) * S + xx] = m;
                }
            for (int y = 0; y < S; ++y)
                for (int xx = 0; xx < S; ++xx) {
                    const std::size_t k = static_cast<std::size_t>(y) * S + xx;
                    float m = change_tmp[k];
                    if (xx > 0) m = std::max(m, change_tmp[k - 1]);
                    if (xx + 1 < S) m = std::max(m, change_tmp[k + 1]);
                    change_w[k] = m;
                }
        }
    }

    static Tokenizer load_tokenizer(const Bundle& b) { return Tokenizer::from_file(b.tokenizer_path, b.dims.max_length); }

    // the tensors and bound calls of nb branches, made on first use
    Branches& branches(int nb) {
        std::unique_ptr<Branches>& slot = branch_sets[nb == 2 ? 0 : 1];
        if (!slot) {
            using V = std::vector<std::int64_t>;
            const std::int64_t b = nb;
            auto B = std::make_unique<Branches>();
            B->nb = nb;
            B->text = Tensor("text", DType::F32, V{b, L, Wt});
            B->text_mask = Tensor("text_mask", DType::F32, V{b, L});
            B->source = Tensor("source", DType::F32, V{b, C, h, h});
            B->region = Tensor("region", DType::F32, V{b, 1, h, h});
            B->flags = Tensor("flags", DType::F32, V{b, 2});
            B->kontext = Tensor("kontext", DType::F32, V{b, K, D});
            B->x = Tensor("x", DType::F32, V{b, C, h, h});
            B->sigma = Tensor("sigma", DType::F32, V{b});
            B->step_size = Tensor("step_size", DType::F32, V{b});
            B->gate_map = Tensor("gate_map", DType::F32, V{b, 1, h, h});
            B->velocity = Tensor("velocity", DType::F32, V{b, C, h, h});
            if (bundle.has_gateway())
                B->gateway = bind("gateway", {&B->text, &B->text_mask, &B->source, &B->region, &B->flags}, {&B->kontext});
            if (bundle.has_decoder_cond()) {
                const std::int64_t n_cond = L + (bundle.has_gateway() ? K : 0);
                B->cond_kv = Tensor("cond_kv", DType::F32, V{b, n_cond, bundle.dims.cond_width()});
                B->cond_bias = Tensor("cond_bias", DType::F32, V{b, n_cond});
                B->cond_emb = Tensor("cond_emb", DType::F32, V{b, D});
                std::vector<Tensor*> in{&B->text, &B->text_mask, &B->flags};
                if (bundle.has_gateway()) in.push_back(&B->kontext);
                B->decoder_cond = bind("decoder_cond", in, {&B->cond_kv, &B->cond_bias, &B->cond_emb});
            }
            if (!bundle.has_region()) B->decoder = bind_decoder(*B);
            slot = std::move(B);
        }
        return *slot;
    }

    std::vector<Tensor*> step_inputs(Branches& B) {
        if (B.decoder_cond) {  // format 3: the conditioning decoder_cond made once per edit
            std::vector<Tensor*> in{&B.x, &B.sigma, &B.cond_kv, &B.cond_bias, &B.cond_emb, &B.source, &B.region, &B.gate_map};
            if (bundle.few_step) in.push_back(&B.step_size);  // format 5
            return in;
        }
        std::vector<Tensor*> in{&B.x, &B.sigma, &B.text, &B.text_mask, &B.source, &B.region, &B.gate_map, &B.flags};
        if (bundle.has_gateway()) in.push_back(&B.kontext);
        return in;
    }

    std::unique_ptr<PreparedCall> bind(const std::string& graph, std::vector<Tensor*> in, std::vector<Tensor*> out) {
        const GraphInfo& info = bundle.graph(graph);
        // every input the graph names must be bound, with the contract's shape
        for (const auto& spec : info.inputs) {
            auto it = std::find_if(in.begin(), in.end(), [&](Tensor* t) { return t->name == spec.name; });
            if (it == in.end()) throw BundleError("graph '" + graph + "' takes an input '" + spec.name + "' this runtime does not provide");
        }
        backend->load(info);
        return backend->prepare(info, in, out);
    }

    std::unique_ptr<PreparedCall> bind_decoder(Branches& B) { return bind("decoder", step_inputs(B), {&B.velocity}); }

    PreparedCall& region_call(Branches& B, const std::vector<std::int64_t>& idx) {
        int m = static_cast<int>(idx.size());
        auto it = B.region_calls.find(m);
        if (it == B.region_calls.end()) {
            RegionCall rc;
            rc.active = std::make_unique<Tensor>("active", DType::I64, std::vector<std::int64_t>{B.nb, m});
            auto in = step_inputs(B);
            in.push_back(rc.active.get());
            rc.call = bind("decoder_region", in, {&B.velocity});
            it = B.region_calls.emplace(m, std::move(rc)).first;
        }
        for (int b = 0; b < B.nb; ++b)
            std::copy(idx.begin(), idx.end(), it->second.active->i.begin() + static_cast<std::ptrdiff_t>(b) * m);
        return *it->second.call;
    }

    TextCall& text_call(int n) {
        auto it = text_calls.find(n);
        if (it == text_calls.end()) {
            TextCall tc;
            tc.ids = std::make_unique<Tensor>("input_ids", DType::I64, std::vector<std::int64_t>{1, n});
            tc.amask = std::make_unique<Tensor>("attention_mask", DType::I64, std::vector<std::int64_t>{1, n});
            tc.hidden = std::make_unique<Tensor>("hidden", DType::F32, std::vector<std::int64_t>{1, n, Wt});
            tc.call = bind("text_encoder", {tc.ids.get(), tc.amask.get()}, {tc.hidden.get()});
            it = text_calls.emplace(n, std::move(tc)).first;
        }
        return it->second;
    }

    // tokenize + text encoder at batch 1 -> hidden (L, Wt), mask (L) as float
    void encode_text(const std::string& s, float* out_hidden, float* out_mask, std::map<std::string, double>& timings,
                     std::vector<std::string>* warnings) {
        auto t0 = Clock::now();
        Encoding e = tokenizer.encode(s);
        if (e.truncated && warnings)
            warnings->push_back("instruction '" + s.substr(0, 40) + "'... is longer than the model's " + std::to_string(L) +
                                " tokens; the rest is ignored");
        // Format 2: run the encoder on the text's own tokens (padding is on the right and masked
        // in every consumer), and give zeros for the padding positions, as the Python runtime does.
        int n = L;
        if (text_dynamic) {
            n = 0;
            for (auto m : e.attention_mask) n += m != 0 ? 1 : 0;
            n = std::max(n, 1);
        }
        if (n == L) {
            std::copy(e.ids.begin(), e.ids.end(), ids.i.begin());
            std::copy(e.attention_mask.begin(), e.attention_mask.end(), amask.i.begin());
            c_text->run();
            std::copy(hidden.f.begin(), hidden.f.end(), out_hidden);
        } else {
            TextCall& tc = text_call(n);
            std::copy(e.ids.begin(), e.ids.begin() + n, tc.ids->i.begin());
            std::copy(e.attention_mask.begin(), e.attention_mask.begin() + n, tc.amask->i.begin());
            tc.call->run();
            std::copy(tc.hidden->f.begin(), tc.hidden->f.end(), out_hidden);
            std::fill(out_hidden + static_cast<std::ptrdiff_t>(n) * Wt, out_hidden + static_cast<std::ptrdiff_t>(L) * Wt, 0.0f);
        }
        for (int k = 0; k < L; ++k) out_mask[k] = static_cast<float>(e.attention_mask[static_cast<std::size_t>(k)]);
        timings["text_encoder"] += ms_since(t0);
    }

    EditResult edit(const Image& img, const std::string& instruction, const std::optional<Box>& box_in, const EditOptions& o) {
        auto t_total = Clock::now();
        const SamplerConfig& cfg = bundle.sampler;
        // -- validation (the Python order: text, steps, guidance, seed, sparse, image, box)
        // inputs.py check_text: no NUL, valid UTF-8 (decode_utf8 throws), a visible character
        if (instruction.find('\0') != std::string::npos)
            throw InputError("instruction contains a NUL character; send plain text saying what to change, e.g. 'make the red circle blue'");
        if (is_blank_text(instruction))
            throw InputError("instruction is empty; say what to change, e.g. 'make the red circle blue'");
        if (!has_visible_text(instruction))
            throw InputError("instruction has no visible character (only spaces, zero-width or control characters); "
                             "say what to change, e.g. 'make the red circle blue'");
        int steps = o.steps == 0 ? cfg.steps : o.steps;
        if (steps < 1 || steps > kMaxSteps)
            throw InputError("steps=" + std::to_string(o.steps) + "; must be an integer from 1 to " + std::to_string(kMaxSteps));
        double s_txt_d = o.text_guidance.value_or(cfg.text_guidance), s_img_d = o.image_guidance.value_or(cfg.image_guidance);
        // bundle.py GUIDANCE_RANGE
        auto g_str = [](double v) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%g", v);
            return std::string(buf);
        };
        if (!std::isfinite(s_txt_d) || s_txt_d < 0.0 || s_txt_d > 100.0)
            throw InputError("text_guidance=" + g_str(s_txt_d) + "; must be a finite number from 0 to 100");
        if (!std::isfinite(s_img_d) || s_img_d < 0.0 || s_img_d > 100.0)
            throw InputError("image_guidance=" + g_str(s_img_d) + "; must be a finite number from 0 to 100");
        const float s_txt = static_cast<float>(s_txt_d), s_img = static_cast<float>(s_img_d);  // numpy: float32 arithmetic
        bool sparse_region = o.sparse == Sparse::Region || (o.sparse == Sparse::Auto && bundle.has_region());
        if (o.sparse == Sparse::Region && !bundle.has_region())
            throw InputError("sparse='region' needs a bundle exported with the region decoder; " + bundle.path +
                             " has none (export with sparse_attn='region'), or use sparse='none'");
        std::map<std::string, double> timings{{"text_encoder", 0.0}, {"gateway", 0.0}, {"cmg", 0.0}, {"image_encoder", 0.0}};
        EditResult result;

        // -- 1. image and box
        auto t0 = Clock::now();
        const int W0 = img.width, H0 = img.height;
        if (W0 < 1 || H0 < 1) throw InputError("image is empty (" + std::to_string(W0) + "x" + std::to_string(H0) + " pixels)");
        if (static_cast<long long>(W0) * H0 > kMaxPixels)
            throw InputError("image is " + std::to_string(W0) + "x" + std::to_string(H0) + " pixels, over the limit of " +
                             std::to_string(kMaxPixels) + "; downscale it first");
        if (img.rgb.size() != static_cast<std::size_t>(W0) * H0 * 3)
            throw InputError("image has " + std::to_string(img.rgb.size()) + " bytes; a " + std::to_string(W0) + "x" +
                             std::to_string(H0) + " RGB image needs " + std::to_string(static_cast<std::size_t>(W0) * H0 * 3));
        std::optional<Box> box;
        if (box_in) box = scale_box(check_box(*box_in, W0, H0), W0, H0, S);
        Image resized = resize_bilinear(img, S, S);
        for (int c = 0; c < 3; ++c)
            for (int k = 0; k < S * S; ++k)
                src_px[static_cast<std::size_t>(c) * S * S + k] =
                    static_cast<float>(resized.rgb[static_cast<std::size_t>(k) * 3 + c]) / 127.5f - 1.0f;
        timings["preprocess"] = ms_since(t0);

        // -- image encoder
        t0 = Clock::now();
        std::copy(src_px.begin(), src_px.end(), image.f.begin());
        c_image_encoder->run();
        timings["image_encoder"] = ms_since(t0);
        const std::size_t lat = static_cast<std::size_t>(C) * h * h, hh = static_cast<std::size_t>(h) * h;
        // region: the box at pixel resolution, max-pooled to latent resolution
        const int f = bundle.dims.factor;
        std::vector<float>& reg = c_region.f;  // (1, 1, h, h)
        std::fill(reg.begin(), reg.end(), 0.0f);
        if (box)
            for (int y = 0; y < h; ++y)
                for (int xx = 0; xx < h; ++xx) {
                    // a latent pixel is in the region if any of its f x f pixels is
                    bool in = box->x0 < (xx + 1) * f && xx * f < box->x1 && box->y0 < (y + 1) * f && y * f < box->y1;
                    reg[static_cast<std::size_t>(y) * h + xx] = in ? 1.0f : 0.0f;
                }
        const float has_region = box ? 1.0f : 0.0f;

        // -- 2. text (instruction; the empty string once per session) and the branches
        Branches& B = branches(edit_branches(s_img_d));
        const int nb = B.nb;
        Tensor &text = B.text, &text_mask = B.text_mask, &source = B.source, &region = B.region, &flags = B.flags,
               &kontext = B.kontext, &x = B.x, &sigma = B.sigma, &gate_map = B.gate_map, &velocity = B.velocity;
        const std::size_t tl = static_cast<std::size_t>(L) * Wt;
        encode_text(instruction, text.f.data(), text_mask.f.data(), timings, &result.warnings);
        if (!have_empty) {
            empty_hidden.assign(tl, 0.0f);
            empty_mask.assign(static_cast<std::size_t>(L), 0.0f);
            encode_text("", empty_hidden.data(), empty_mask.data(), timings, nullptr);
            have_empty = true;
        }
        for (int b = 1; b < nb; ++b) {
            std::copy(empty_hidden.begin(), empty_hidden.end(), text.f.begin() + static_cast<std::ptrdiff_t>(b * tl));
            std::copy(empty_mask.begin(), empty_mask.end(), text_mask.f.begin() + static_cast<std::ptrdiff_t>(b) * L);
        }
        std::copy(latent.f.begin(), latent.f.end(), source.f.begin());
        std::copy(latent.f.begin(), latent.f.end(), source.f.begin() + static_cast<std::ptrdiff_t>(lat));
        std::fill(source.f.begin() + static_cast<std::ptrdiff_t>(2 * lat), source.f.end(), 0.0f);  // nothing with 2
        std::copy(reg.begin(), reg.end(), region.f.begin());
        std::copy(reg.begin(), reg.end(), region.f.begin() + static_cast<std::ptrdiff_t>(hh));
        std::fill(region.f.begin() + static_cast<std::ptrdiff_t>(2 * hh), region.f.end(), 0.0f);
        const float fl[6] = {1.0f, has_region, 1.0f, has_region, 0.0f, 0.0f};
        std::copy(fl, fl + 2 * nb, flags.f.begin());
        if (B.gateway) {
            t0 = Clock::now();
            B.gateway->run();
            timings["gateway"] = ms_since(t0);
        }
        if (B.decoder_cond) {  // format 3: every step's cross-attention keys and values, once
            t0 = Clock::now();
            B.decoder_cond->run();
            timings["decoder_cond"] = ms_since(t0);
        }

        // -- 3. the gate, once, on the first branch
        std::vector<float> gate_soft(static_cast<std::size_t>(N), 1.0f);
        if (c_cmg) {
            t0 = Clock::now();
            std::copy(kontext.f.begin(), kontext.f.begin() + static_cast<std::ptrdiff_t>(K) * D, c_kontext.f.begin());
            std::copy(latent.f.begin(), latent.f.end(), c_source.f.begin());
            c_cmg->run();
            std::copy(gate.f.begin(), gate.f.end(), gate_soft.begin());
            timings["cmg"] = ms_since(t0);
        }
        std::vector<float> m_tok(static_cast<std::size_t>(N));
        for (int k = 0; k < N; ++k) {
            float gv = gate_soft[static_cast<std::size_t>(k)];
            m_tok[static_cast<std::size_t>(k)] = cfg.gate_threshold ? (gv > static_cast<float>(*cfg.gate_threshold) ? 1.0f : 0.0f) : gv;
        }
        for (int b = 0; b < nb; ++b)
            for (int y = 0; y < h; ++y)
                for (int xx = 0; xx < h; ++xx)
                    gate_map.f[static_cast<std::size_t>(b) * hh + static_cast<std::size_t>(y) * h + xx] =
                        m_tok[static_cast<std::size_t>((y / p) * g + xx / p)];

        PreparedCall* call = nullptr;
        if (sparse_region) {
            std::vector<bool> on(static_cast<std::size_t>(N));
            for (int k = 0; k < N; ++k) on[static_cast<std::size_t>(k)] = m_tok[static_cast<std::size_t>(k)] > 0.5f;
            auto idx = active_token_indices(on, g, cfg.halo, cfg.region_buckets);
            call = &region_call(B, idx);
            result.active_tokens = static_cast<int>(idx.size());
        } else {
            if (!B.decoder) B.decoder = bind_decoder(B);
            call = B.decoder.get();
        }

        // -- 4. the denoising loop (no allocation inside: fixed buffers, a bound call)
        portable_normal(o.seed, x1.data(), lat);
        const bool few = bundle.few_step && bundle.few_step->runs(steps);
        if (few)
            sched.set_sigmas(few_step_sigmas(steps));
        else
            sched.set_timesteps(steps);
        result.decoder_steps.assign(static_cast<std::size_t>(steps), 0.0);
        const float* v_ti = velocity.f.data();
        const float* v_ui = v_ti + lat;
        const float* v_uu = nb == 3 ? v_ti + 2 * lat : nullptr;
        for (int i = 0; i < steps; ++i) {
            t0 = Clock::now();
            for (int b = 0; b < nb; ++b) std::copy(x1.begin(), x1.end(), x.f.begin() + static_cast<std::ptrdiff_t>(b * lat));
            const float sg = sched.sigma(i);
            std::fill(sigma.f.begin(), sigma.f.end(), sg);
            if (bundle.few_step) std::fill(B.step_size.f.begin(), B.step_size.f.end(), few ? sched.step_size(i) : 0.0f);
            call->run();
            if (v_uu) {
                for (std::size_t k = 0; k < lat; ++k) {
                    float a = v_uu[k] + s_img * (v_ui[k] - v_uu[k]);
                    v1[k] = a + s_txt * (v_ti[k] - v_ui[k]);
                }
            } else {
                for (std::size_t k = 0; k < lat; ++k) v1[k] = v_ui[k] + s_txt * (v_ti[k] - v_ui[k]);
            }
            sched.step(i, v1.data(), x1.data(), lat);
            result.decoder_steps[static_cast<std::size_t>(i)] = ms_since(t0);
        }
        timings["decoder"] = std::accumulate(result.decoder_steps.begin(), result.decoder_steps.end(), 0.0);

        // -- 5. decode, keep the source outside the gate, back to uint8 and the input's size
        t0 = Clock::now();
        std::copy(x1.begin(), x1.end(), dec_latent.f.begin());
        c_image_decoder->run();
        timings["image_decoder"] = ms_since(t0);
        if (c_source_decoder) {
            t0 = Clock::now();
            c_source_decoder->run();  // reads `latent`, the image encoder's output
            timings["source_decoder"] = ms_since(t0);
        }
        t0 = Clock::now();
        std::vector<float>& out = dec_image.f;  // (1, 3, S, S)
        if (bundle.has_cmg()) {
            for (int y = 0; y < S; ++y)
                for (int xx = 0; xx < S; ++xx) pix[static_cast<std::size_t>(y) * S + xx] = gate_map.f[static_cast<std::size_t>(y / f) * h + xx / f];
            const std::size_t ss = static_cast<std::size_t>(S) * S;
            if (c_source_decoder) {  // k = pix w: the source's pixels where the two decodings agree
                change_weight(out.data(), src_dec_image.f.data());
                for (std::size_t k = 0; k < ss; ++k) pix[k] = pix[k] * change_w[k];
            }
            for (int c = 0; c < 3; ++c)
                for (std::size_t k = 0; k < ss; ++k) {
                    float pv = pix[k];
                    float a = pv * out[c * ss + k];
                    float b = (1.0f - pv) * src_px[c * ss + k];
                    out[c * ss + k] = a + b;
                }
        }
        Image res;
        res.width = res.height = S;
        res.rgb.resize(static_cast<std::size_t>(S) * S * 3);
        for (int c = 0; c < 3; ++c)
            for (int k = 0; k < S * S; ++k) {
                float v = out[static_cast<std::size_t>(c) * S * S + k];
                v = std::min(std::max(v, -1.0f), 1.0f);
                v = (v + 1.0f) * 127.5f;
                res.rgb[static_cast<std::size_t>(k) * 3 + c] = static_cast<std::uint8_t>(std::nearbyint(v));
            }
        if (W0 != S || H0 != S) res = resize_bilinear(res, W0, H0);
        timings["postprocess"] = ms_since(t0);
        timings["total"] = ms_since(t_total);

        result.image = std::move(res);
        result.timings = std::move(timings);
        result.gate = std::move(gate_soft);
        result.grid = g;
        result.seed = o.seed;
        result.steps = steps;
        result.backend = backend->name();
        return result;
    }
};

namespace {
// inputs.py check_threads: 0 (ONNX Runtime's default, one per core) or 1 .. this machine's logical
// CPUs; an absurd count would have ONNX Runtime start that many threads.
const SessionOptions& checked(const SessionOptions& o) {
    unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
    if (o.threads < 0 || static_cast<unsigned>(o.threads) > cpus)
        throw InputError("threads=" + std::to_string(o.threads) + "; must be an integer from 1 to " + std::to_string(cpus) +
                         " (this machine's logical CPUs), or 0 for one per core");
    return o;
}
}  // namespace

Session::Session(const std::string& bundle_dir, const SessionOptions& options)
    : impl_(std::make_unique<Impl>(bundle_dir, checked(options))) {}
Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

EditResult Session::edit(const Image& image, const std::string& instruction, const std::optional<Box>& box,
                         const EditOptions& options) {
    if (!impl_) throw InputError("this Session was moved from; open a new one");
    std::lock_guard<std::mutex> lock(impl_->mutex);
    return impl_->edit(image, instruction, box, options);
}

BundleSummary Session::bundle() const {
    const Bundle& b = impl_->bundle;
    BundleSummary s;
    s.path = b.path;
    s.precision = b.precision;
    s.sparse_attn = b.sparse_attn;
    s.image_size = b.dims.image_size;
    s.max_length = b.dims.max_length;
    s.default_steps = b.sampler.steps;
    s.has_region = b.has_region();
    s.folders = b.folders;
    return s;
}

std::string Session::backend_name() const { return impl_->backend->name(); }
double Session::open_ms() const { return impl_->open_ms; }

const char* version() { return "0.1.0"; }

}  // namespace qk
