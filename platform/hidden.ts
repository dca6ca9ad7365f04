/**
 * What in a text does not show, with no dependency: the services refuse it in a client's text
 * (validate.ts), and the commands escape it in what they print of others' text (printable.ts), so both
 * hold the same characters hidden. A command that prints loads this, not the runtime.
 */

// Control and format characters (Unicode Cc and Cf): C0, DEL and C1; every bidirectional control
// (the overrides, embeddings, isolates and marks, which make a text display as another: "Trojan
// Source"); the line and paragraph separators; and every default-ignorable code point — what shows
// as nothing and can carry a hidden text: zero-width space, word joiner, the invisible operators, the
// soft hyphen, the combining grapheme joiner, the letters that show nothing (the Hangul fillers,
// Khmer's inherent vowels), the tag characters (hidden ASCII) and the unassigned ignorable blocks
// after them (U+E0080…: the same, a block on). Of those some text needs, each where it belongs, and
// once: a joiner (ZWJ, ZWNJ: emoji sequences, Persian) not at the start nor after another; an emoji,
// text or standardized variation selector (U+FE00–U+FE0F) after a character that is no mark; an
// ideographic one (U+E0100–U+E01EF: a Japanese name's exact form) after a Han character; a Mongolian
// one after a Mongolian letter; the three flags spelt in tags (England's, Scotland's, Wales's:
// U+1F3F4, "gbeng", "gbsct" or "gbwls" in tags, U+E007F). With them the braille blank but after
// braille (braille's word space), and a mark after eight marks in a row: a letter under hundreds of
// combining marks is one character as wide or tall as a page.
const HIDDEN =
  // biome-ignore lint/suspicious/noMisleadingCharacterClass: each mark and selector is matched on its own, on purpose
  /(\u{1F3F4}\u{E0067}\u{E0062}(?:\u{E0065}\u{E006E}\u{E0067}|\u{E0073}\u{E0063}\u{E0074}|\u{E0077}\u{E006C}\u{E0073})\u{E007F})|(?![\u200c\u200d\u180b-\u180d\u180f\ufe00-\ufe0f\u{E0100}-\u{E01EF}])[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Default_Ignorable_Code_Point}]|(?:^|(?<=[\u200c\u200d]))[\u200c\u200d]|(?:^|(?<=\p{M}))[\ufe00-\ufe0f]|(?<!\p{Script=Han})[\u{E0100}-\u{E01EF}]|(?<!\p{Script=Mongolian})[\u180b-\u180d\u180f]|(?<![\u2800-\u28ff])\u2800|(?<=\p{M}{8})\p{M}/gu;

/**
 * `text` with each hidden character (control, format, invisible; see above) given to `by`: what
 * the services' refusal (`requireText` in validate.ts), and the commands that print what others wrote
 * (printable.ts), hold to be hidden.
 */
export function replaceHidden(text: string, by: (char: string) => string): string {
  return text.replace(HIDDEN, (c, flag: string | undefined) => flag ?? by(c));
}

/** `text` with its control characters escaped (`\n` as `\x0a`): a header value cannot hold them. */
export function oneLine(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: they are what is escaped
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}
