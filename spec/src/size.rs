//! The one `WxH` parser every command line uses.

use crate::error::{Result, SpecError};

/// Largest side any tool accepts: far above any endoscopy frame, far below
/// what would overflow a tensor's element count.
pub const MAX_SIDE: usize = 65_536;

/// Parses `WxH` (`x` or `X`, e.g. `256x192`) or a single `N` for `NxN`;
/// both sides must be in `1..=MAX_SIDE`. Returns `(width, height)`.
pub fn parse_wxh(text: &str) -> Result<(usize, usize)> {
    let bad = |reason: &str| SpecError::BadSize {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let t = text.trim();
    let (w, h) = match t.split_once(['x', 'X']) {
        Some((w, h)) => (w, h),
        None => (t, t),
    };
    let side = |s: &str| -> Result<usize> {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| bad("expected WxH with whole numbers, e.g. 256x256"))?;
        if n == 0 || n > MAX_SIDE {
            return Err(bad(&format!("each side must be between 1 and {MAX_SIDE}")));
        }
        Ok(n)
    };
    Ok((side(w)?, side(h)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_spellings() {
        assert_eq!(parse_wxh("256x192").unwrap(), (256, 192));
        assert_eq!(parse_wxh("64X32").unwrap(), (64, 32));
        assert_eq!(parse_wxh("128").unwrap(), (128, 128));
        assert_eq!(parse_wxh(" 16 x 8 ").unwrap(), (16, 8));
    }

    #[test]
    fn refuses_empty_zero_and_absurd_sizes() {
        for bad in [
            "",
            "x",
            "0x0",
            "64x0",
            "-1x4",
            "axb",
            "100000x100000",
            "3x4x5",
        ] {
            assert!(parse_wxh(bad).is_err(), "{bad} accepted");
        }
    }
}
