//! A read-only peek into a getAssertion request for the one fact the tool needs locally: whether
//! the host asked for user presence (`options.up`, default true).
//!
//! The server parses and validates every request; the tool only decides whether to show its
//! presence prompt, so on anything it does not understand it answers `None` and the caller prompts.

/// `Some(up)` from the getAssertion parameters map (key 5 = options, text key "up").
pub fn get_assertion_up(params: &[u8]) -> Option<bool> {
    let mut r = Reader { b: params, pos: 0 };
    let n = r.map_len()?;
    for _ in 0..n {
        let key = r.uint_key();
        if key == Some(5) {
            let m = r.map_len()?;
            for _ in 0..m {
                let is_up = r.text()? == b"up";
                let v = r.bool_or_skip()?;
                if is_up {
                    return v;
                }
            }
            return Some(true);
        }
        r.skip()?;
    }
    Some(true)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }

    /// Reads a head: (major type, argument).
    fn head(&mut self) -> Option<(u8, u64)> {
        let ib = self.byte()?;
        let (major, info) = (ib >> 5, ib & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let len = 1usize << (info - 24);
                let mut v = 0u64;
                for _ in 0..len {
                    v = (v << 8) | u64::from(self.byte()?);
                }
                v
            }
            _ => return None, // indefinite lengths are not canonical CTAP2
        };
        Some((major, arg))
    }

    fn map_len(&mut self) -> Option<u64> {
        match self.head()? {
            (5, n) => Some(n),
            _ => None,
        }
    }

    /// Reads a map key; `Some(k)` if it is an unsigned integer, `None` (after consuming it) if not.
    fn uint_key(&mut self) -> Option<u64> {
        let save = self.pos;
        match self.head() {
            Some((0, k)) => Some(k),
            _ => {
                self.pos = save;
                self.skip();
                None
            }
        }
    }

    fn text(&mut self) -> Option<&[u8]> {
        let (major, len) = self.head()?;
        if major != 3 {
            return None;
        }
        let start = self.pos;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let s = self.b.get(start..end)?;
        self.pos = end;
        Some(s)
    }

    /// `Some(Some(bool))` for a boolean, `Some(None)` for any other (skipped) value.
    fn bool_or_skip(&mut self) -> Option<Option<bool>> {
        match self.b.get(self.pos)? {
            0xf4 => {
                self.pos += 1;
                Some(Some(false))
            }
            0xf5 => {
                self.pos += 1;
                Some(Some(true))
            }
            _ => self.skip().map(|()| None),
        }
    }

    fn skip(&mut self) -> Option<()> {
        self.skip_depth(0)
    }

    fn skip_depth(&mut self, depth: u8) -> Option<()> {
        if depth > 8 {
            return None;
        }
        let (major, arg) = self.head()?;
        match major {
            0 | 1 | 7 => Some(()),
            2 | 3 => {
                self.pos = self.pos.checked_add(usize::try_from(arg).ok()?)?;
                (self.pos <= self.b.len()).then_some(())
            }
            4 => (0..arg).try_for_each(|_| self.skip_depth(depth + 1)),
            5 => (0..arg.checked_mul(2)?).try_for_each(|_| self.skip_depth(depth + 1)),
            _ => None, // tags are not allowed in CTAP2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // {1: "example.com", 2: h'00'*32, 5: {"up": false}}
    fn ga(options: &[u8]) -> Vec<u8> {
        let mut v = vec![0xa3, 0x01, 0x6b];
        v.extend_from_slice(b"example.com");
        v.extend_from_slice(&[0x02, 0x58, 0x20]);
        v.extend_from_slice(&[0u8; 32]);
        v.push(0x05);
        v.extend_from_slice(options);
        v
    }

    #[test]
    fn reads_up_option() {
        assert_eq!(
            get_assertion_up(&ga(&[0xa1, 0x62, b'u', b'p', 0xf4])),
            Some(false)
        );
        assert_eq!(
            get_assertion_up(&ga(&[0xa1, 0x62, b'u', b'p', 0xf5])),
            Some(true)
        );
        // {"uv": false, "up": false}: sorted keys, up after uv? ("up" < "uv"), either order read.
        assert_eq!(
            get_assertion_up(&ga(&[0xa2, 0x62, b'u', b'v', 0xf4, 0x62, b'u', b'p', 0xf4])),
            Some(false)
        );
        assert_eq!(
            get_assertion_up(&ga(&[0xa1, 0x62, b'u', b'v', 0xf5])),
            Some(true)
        );
    }

    #[test]
    fn absent_options_default_to_up() {
        assert_eq!(get_assertion_up(&[0xa1, 0x01, 0x61, b'x']), Some(true));
    }

    #[test]
    fn garbage_is_not_understood() {
        assert_eq!(get_assertion_up(&[]), None);
        assert_eq!(get_assertion_up(&[0x80]), None);
        // A map claiming more entries than there are bytes.
        assert_eq!(get_assertion_up(&[0xa5, 0x01]), None);
        // A huge byte string length must not overflow or panic.
        assert_eq!(
            get_assertion_up(&[
                0xa1, 0x02, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ]),
            None
        );
    }
}
