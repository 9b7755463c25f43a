// The bundle's tokenizer.json read the way the `tokenizers` library runs it, for the two kinds our
// bundles use (the C++ port, runtime/cpp/src/tokenizer.cpp, does the same):
// - WordLevel + Whitespace pre-tokenizer (\w+|[^\w\s]+) + Lowercase (the tiny preset);
// - BERT WordPiece: BertNormalizer (clean text, CJK padding, NFD accent stripping, lowercase),
//   BertPreTokenizer, `##` continuation, the unk token for words it cannot split.
// Added tokens are matched first in the raw text (leftmost, then longest); then
// TemplateProcessing / BertProcessing specials, right truncation and fixed right padding to the
// manifest's max_length. Anything else is refused with a BundleError naming the unsupported part.
// Unicode classes come from the JS engine's tables (\p{...}, normalize("NFD"), toLowerCase on one
// code point at a time, i.e. without context, as Rust's char::to_lowercase).
import { BundleError, InputError } from "./errors.js";

const WHITE_SPACE = /^\p{White_Space}$/u;
const CONTROL = /^[\p{Cc}\p{Cf}\p{Co}\p{Cs}]$/u;
const PUNCTUATION = /^\p{P}$/u;
const WORD = /^[\p{Alphabetic}\p{Join_Control}\p{Mn}\p{Me}\p{Mc}\p{Nd}\p{Pc}]$/u;
const NONSPACING_MARK = /^\p{Mn}$/u;

const isWhiteSpace = (c) => WHITE_SPACE.test(c);
// the BERT normalizer's whitespace: \t \n \r and White_Space
const bertIsWhitespace = (c) => c === "\t" || c === "\n" || c === "\r" || isWhiteSpace(c);
// control, format, private use, surrogate (unassigned code points stay); \t \n \r are whitespace
const bertIsControl = (c) => c !== "\t" && c !== "\n" && c !== "\r" && CONTROL.test(c);

function isAsciiPunctuation(cp) {
  return (cp >= 0x21 && cp <= 0x2f) || (cp >= 0x3a && cp <= 0x40) || (cp >= 0x5b && cp <= 0x60) || (cp >= 0x7b && cp <= 0x7e);
}
const bertIsPunctuation = (c) => isAsciiPunctuation(c.codePointAt(0)) || PUNCTUATION.test(c);

function isChineseChar(cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

function isWordChar(c) {
  const cp = c.codePointAt(0);
  if (cp < 0x80) return (cp >= 48 && cp <= 57) || (cp >= 97 && cp <= 122) || (cp >= 65 && cp <= 90) || cp === 95;
  return WORD.test(c);
}

// one code point at a time: no context (a lone capital sigma becomes σ)
const lowercase = (chars) => chars.flatMap((c) => Array.from(c.toLowerCase()));

/** Where a text is not valid Unicode (a lone surrogate: bytes that were not UTF-8), an InputError. */
function codePoints(text) {
  if (typeof text !== "string") throw new InputError(`the text must be a string, not ${typeof text}`);
  if (!text.isWellFormed()) throw new InputError("the text is not valid UTF-8 text (it holds unpaired surrogates); send UTF-8 text");
  return Array.from(text);
}

export class Tokenizer {
  /** `json`: the parsed tokenizer.json; `maxLength`: the manifest's dims.max_length; `where`: a name for messages. */
  constructor(json, maxLength, where = "tokenizer.json") {
    this.where = where;
    const refuse = (what) => {
      throw new BundleError(`${where}: ${what}; this runtime reads WordLevel + Whitespace + Lowercase and BERT WordPiece ` +
        `tokenizers only (re-export the bundle with one of those, or use the Python runtime)`);
    };
    if (!json || typeof json !== "object" || !json.model || typeof json.model !== "object") refuse("no 'model' object");
    const m = json.model;
    if (m.type === "WordLevel") {
      this.model = "wordlevel";
    } else if (m.type === "WordPiece") {
      this.model = "wordpiece";
      this.prefix = m.continuing_subword_prefix ?? "##";
      this.maxChars = m.max_input_chars_per_word ?? 100;
    } else {
      refuse(`model type '${m.type}' is not supported`);
    }
    if (!m.vocab || typeof m.vocab !== "object") refuse("the model has no vocab");
    this.vocab = new Map(Object.entries(m.vocab));
    this.unkToken = m.unk_token ?? "[UNK]";

    this.normalizers = [];
    const addNormalizer = (n) => {
      if (n === null || n === undefined) return;
      if (n.type === "Lowercase") this.normalizers.push({ kind: "lowercase" });
      else if (n.type === "BertNormalizer") {
        const lower = n.lowercase ?? true;
        this.normalizers.push({
          kind: "bert", cleanText: n.clean_text ?? true, handleChinese: n.handle_chinese_chars ?? true, lowercase: lower,
          stripAccents: typeof n.strip_accents === "boolean" ? n.strip_accents : lower, // null: follows lowercase
        });
      } else if (n.type === "Sequence") for (const sub of n.normalizers ?? []) addNormalizer(sub);
      else refuse(`normalizer ${JSON.stringify(n)} is not supported`);
    };
    addNormalizer(json.normalizer);

    const pre = json.pre_tokenizer;
    if (pre && pre.type === "Whitespace") this.pre = "whitespace";
    else if (pre && pre.type === "BertPreTokenizer") this.pre = "bert";
    else refuse(`pre_tokenizer ${JSON.stringify(pre)} is not supported`);

    this.added = [];
    for (const a of json.added_tokens ?? []) {
      if (a.normalized || a.lstrip || a.rstrip || a.single_word) {
        refuse(`added token ${JSON.stringify(a)} uses normalized / lstrip / rstrip / single_word matching`);
      }
      this.added.push({ content: Array.from(a.content), id: a.id });
    }
    this.added.sort((x, y) => y.content.length - x.content.length); // stable: longest first

    this.before = [];
    this.after = [];
    const post = json.post_processor;
    if (post) {
      if (post.type === "TemplateProcessing") {
        let seenA = false;
        for (const item of post.single ?? []) {
          if (item.Sequence) {
            if (seenA) refuse("a template with $A twice");
            seenA = true;
          } else if (item.SpecialToken) {
            const special = post.special_tokens?.[item.SpecialToken.id];
            if (!special) refuse(`the template names the special token ${item.SpecialToken.id}, which it does not define`);
            (seenA ? this.after : this.before).push(...special.ids);
          } else refuse(`template item ${JSON.stringify(item)} is not supported`);
        }
        if (!seenA) refuse("a template without $A");
      } else if (post.type === "BertProcessing") {
        this.before.push(post.cls[1]);
        this.after.push(post.sep[1]);
      } else refuse(`post_processor type '${post.type}' is not supported`);
    }

    const trunc = json.truncation, pad = json.padding;
    let truncLen = -1, padLen = -1;
    if (trunc && typeof trunc === "object") {
      truncLen = trunc.max_length;
      if ((trunc.direction ?? "Right") !== "Right" || (trunc.stride ?? 0) !== 0) {
        refuse(`truncation ${JSON.stringify(trunc)} (only to the right, stride 0, is supported)`);
      }
    }
    if (pad && typeof pad === "object") {
      if (pad.strategy && typeof pad.strategy === "object" && "Fixed" in pad.strategy) padLen = pad.strategy.Fixed;
      if ((pad.direction ?? "Right") !== "Right") refuse(`padding ${JSON.stringify(pad)} (only to the right is supported)`);
      this.padId = pad.pad_id ?? 0;
    } else this.padId = 0;
    if (maxLength > 0 && (truncLen !== maxLength || padLen !== maxLength)) {
      throw new BundleError(`${where} must pad and truncate to max_length ${maxLength} (has padding ${JSON.stringify(pad)}, ` +
        `truncation ${JSON.stringify(trunc)}); re-export the bundle`);
    }
    this.maxLength = maxLength > 0 ? maxLength : Math.max(truncLen, padLen);
    if (!(this.maxLength > 0)) refuse("no fixed padding / truncation length");
  }

  get kind() {
    return this.model;
  }

  normalize(chars) {
    let s = chars;
    for (const step of this.normalizers) {
      if (step.kind === "lowercase") {
        s = lowercase(s);
        continue;
      }
      if (step.cleanText) {
        s = s.filter((c) => c !== "\u0000" && c !== "\ufffd" && !bertIsControl(c)).map((c) => (bertIsWhitespace(c) ? " " : c));
      }
      if (step.handleChinese) s = s.flatMap((c) => (isChineseChar(c.codePointAt(0)) ? [" ", c, " "] : [c]));
      if (step.stripAccents) s = Array.from(s.join("").normalize("NFD")).filter((c) => !NONSPACING_MARK.test(c));
      if (step.lowercase) s = lowercase(s);
    }
    return s;
  }

  preTokenize(s) {
    const words = [];
    if (this.pre === "whitespace") { // the matches of \w+|[^\w\s]+
      let i = 0;
      while (i < s.length) {
        if (isWhiteSpace(s[i])) {
          i++;
          continue;
        }
        const word = isWordChar(s[i]);
        let j = i + 1;
        while (j < s.length && !isWhiteSpace(s[j]) && isWordChar(s[j]) === word) j++;
        words.push(s.slice(i, j));
        i = j;
      }
      return words;
    }
    // BertPreTokenizer: split on whitespace (dropped), each punctuation character on its own
    let cur = [];
    const flush = () => {
      if (cur.length) words.push(cur);
      cur = [];
    };
    for (const c of s) {
      if (isWhiteSpace(c)) flush();
      else if (bertIsPunctuation(c)) {
        flush();
        words.push([c]);
      } else cur.push(c);
    }
    flush();
    return words;
  }

  unkId() {
    const id = this.vocab.get(this.unkToken);
    if (id === undefined) throw new InputError(`${this.where}: the text has a word outside the vocabulary and the tokenizer has no unk token`);
    return id;
  }

  modelTokens(word, ids) {
    if (this.model === "wordlevel") {
      const id = this.vocab.get(word.join(""));
      ids.push(id !== undefined ? id : this.unkId());
      return;
    }
    if (word.length > this.maxChars) {
      ids.push(this.unkId());
      return;
    }
    const pieces = [];
    let start = 0;
    while (start < word.length) {
      let end = word.length, found = false;
      while (start < end) {
        const key = (start > 0 ? this.prefix : "") + word.slice(start, end).join("");
        const id = this.vocab.get(key);
        if (id !== undefined) {
          pieces.push(id);
          found = true;
          break;
        }
        end--;
      }
      if (!found) {
        ids.push(this.unkId());
        return;
      }
      start = end;
    }
    ids.push(...pieces);
  }

  encodePlain(chars, ids) {
    for (const w of this.preTokenize(this.normalize(chars))) this.modelTokens(w, ids);
  }

  /** The content ids of `text` (no specials, no truncation). */
  contentIds(text) {
    const s = codePoints(text);
    const ids = [];
    let i = 0, start = 0;
    while (i < s.length && this.added.length) {
      let hit = null;
      for (const t of this.added) { // longest first
        if (t.content.length && t.content.every((c, k) => s[i + k] === c)) {
          hit = t;
          break;
        }
      }
      if (!hit) {
        i++;
        continue;
      }
      this.encodePlain(s.slice(start, i), ids);
      ids.push(hit.id);
      i += hit.content.length;
      start = i;
    }
    this.encodePlain(s.slice(start), ids);
    return ids;
  }

  /** -> {ids, attentionMask (both maxLength numbers), truncated}. */
  encode(text) {
    let ids = this.contentIds(text);
    const L = this.maxLength;
    const room = Math.max(0, L - this.before.length - this.after.length);
    let truncated = false;
    if (ids.length > room) {
      ids = ids.slice(0, room);
      truncated = true;
    }
    const all = [...this.before, ...ids, ...this.after].slice(0, L);
    const attentionMask = all.map(() => 1);
    while (all.length < L) {
      all.push(this.padId);
      attentionMask.push(0);
    }
    return { ids: all, attentionMask, truncated };
  }
}
