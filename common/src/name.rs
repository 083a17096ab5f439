//! File names and symlink targets as they travel and are stored.
//!
//! On Linux a name is any bytes but `/` and NUL, and a symlink target any bytes but NUL; old
//! archives and other systems bring names in Latin-1 and other non-UTF-8 encodings. The wire
//! protocol and the metadata store carry names as UTF-8 strings, so each is the *encoding* of
//! the name's bytes, made and read back only where names cross into and out of dfs (the FUSE
//! layer of a mount, the paths given to the `dfs` tool):
//! - valid UTF-8 is kept as it is (almost every name: its encoding is itself);
//! - every other byte `b` becomes the character U+10FF00 + `b`, one of the last 256 code
//!   points of the private-use plane 16, which no text uses;
//! - those 256 characters in a valid name have their UTF-8 bytes written the same way, so the
//!   encoding is one-to-one: [`decode`] gives back exactly the bytes [`encode`] was given.
//!
//! The metadata server never decodes a name; it only measures one ([`raw_len`]), so the
//! length limits are those of the bytes, as on Linux.

use std::borrow::Cow;

/// The character that stands for byte 0; byte `b` is `ESCAPE_BASE + b`.
const ESCAPE_BASE: u32 = 0x10_FF00;

fn escapes(c: char) -> Option<u8> {
    u8::try_from(u32::from(c).checked_sub(ESCAPE_BASE)?).ok()
}

fn escape(b: u8) -> char {
    char::from_u32(ESCAPE_BASE + u32::from(b)).expect("plane 16 is valid")
}

/// Whether `s` holds any of the characters that stand for bytes.
fn has_escapes(s: &str) -> bool {
    s.chars().any(|c| escapes(c).is_some())
}

/// The encoding of the name or target `bytes`; borrowed when it is the same string.
pub fn encode(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if !has_escapes(s) {
            return Cow::Borrowed(s);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if escapes(c).is_some() {
                let mut buf = [0u8; 4];
                out.extend(c.encode_utf8(&mut buf).bytes().map(escape));
            } else {
                out.push(c);
            }
        }
        out.extend(chunk.invalid().iter().copied().map(escape));
    }
    Cow::Owned(out)
}

/// The bytes of the name or target whose encoding is `name`.
pub fn decode(name: &str) -> Cow<'_, [u8]> {
    if !has_escapes(name) {
        return Cow::Borrowed(name.as_bytes());
    }
    let mut out = Vec::with_capacity(name.len());
    for c in name.chars() {
        match escapes(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
        }
    }
    Cow::Owned(out)
}

/// Whether `name` is what [`encode`] makes of some bytes. Names are stored and compared as
/// encodings: two encodings of the same bytes would be two entries that look alike.
pub fn is_canonical(name: &str) -> bool {
    !has_escapes(name) || encode(&decode(name)) == name
}

/// The length in bytes of the name or target whose encoding is `name`.
pub fn raw_len(name: &str) -> usize {
    name.chars()
        .map(|c| {
            if escapes(c).is_some() {
                1
            } else {
                c.len_utf8()
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) {
        let encoded = encode(bytes);
        assert_eq!(&*decode(&encoded), bytes, "{encoded:?}");
        assert_eq!(raw_len(&encoded), bytes.len(), "{encoded:?}");
    }

    #[test]
    fn valid_names_are_their_own_encoding() {
        for name in ["a", "café", "日本語.txt", "\u{10FEFF}"] {
            assert!(matches!(encode(name.as_bytes()), Cow::Borrowed(s) if s == name));
            assert!(matches!(decode(name), Cow::Borrowed(b) if b == name.as_bytes()));
            round_trip(name.as_bytes());
        }
    }

    #[test]
    fn any_bytes_come_back_exactly() {
        // Latin-1 "café", a lone continuation byte, a truncated sequence, every byte value,
        // and valid names holding the characters that stand for bytes.
        round_trip(b"caf\xe9");
        round_trip(b"\x80");
        round_trip(b"a\xe6\x97");
        round_trip(&(0u8..=255).collect::<Vec<_>>());
        round_trip("\u{10FF00}".as_bytes());
        round_trip("x\u{10FFE9}y\u{10FFFF}".as_bytes());
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len % 64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Bytes near the escape characters' own encoding (F4 8F BC..BF) often.
                    [0xF4, 0x8F, 0xBC, 0xBF, b'a', (seed >> 24) as u8][(seed % 6) as usize]
                })
                .collect();
            round_trip(&bytes);
        }
    }

    #[test]
    fn only_encodings_are_canonical() {
        assert!(is_canonical("café"));
        assert!(is_canonical(&encode(b"caf\xe9")));
        assert!(is_canonical(&encode("\u{10FF00}".as_bytes())));
        // The character for b'a' stands for a byte that is valid UTF-8 on its own.
        assert!(!is_canonical("\u{10FF61}"));
        // A character for bytes, not escaped.
        assert!(!is_canonical("\u{10FF00}"));
    }

    #[test]
    fn different_names_have_different_encodings() {
        let names: [&[u8]; 4] = [
            b"caf\xe9",
            "caf\u{10FFE9}".as_bytes(),
            "café".as_bytes(),
            b"caf\xc3",
        ];
        let encoded: Vec<String> = names.iter().map(|n| encode(n).into_owned()).collect();
        for i in 0..names.len() {
            for j in 0..i {
                assert_ne!(encoded[i], encoded[j], "{:?} and {:?}", names[i], names[j]);
            }
        }
    }
}
