//! Text in a fixed-size field of shared memory (a model's path in `qwen_embed.stats`, the spec the supervisor
//! publishes): NUL-terminated, and cut at a character boundary where it does not fit, keeping the end that says the
//! most.

/// Which end of a text too long for its field is kept.
#[derive(Clone, Copy)]
pub enum Keep {
    /// The start: what the supervisor publishes (a model spec cut short no longer equals a session's, which then runs
    /// its own model; an exit status keeps its first words).
    Head,
    /// The end: a model path keeps the model's name.
    Tail,
}

/// Writes `src` into `dst`, NUL-terminated (at most `dst.len() - 1` bytes of it, whole characters only).
pub fn write(dst: &mut [u8], src: &str, keep: Keep) {
    let room = dst.len() - 1;
    let kept = match keep {
        Keep::Head => {
            let mut end = src.len().min(room);
            while !src.is_char_boundary(end) {
                end -= 1;
            }
            &src[..end]
        }
        Keep::Tail => {
            let mut start = src.len().saturating_sub(room);
            while !src.is_char_boundary(start) {
                start += 1;
            }
            &src[start..]
        }
    };
    dst.fill(0);
    dst[..kept.len()].copy_from_slice(kept.as_bytes());
}

/// The text of a field written by [`write`].
pub fn read(src: &[u8]) -> String {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_that_does_not_fit_is_cut_between_characters_at_the_end_it_does_not_keep() {
        let mut field = [0xffu8; 8];
        write(&mut field, "short", Keep::Head);
        assert_eq!(read(&field), "short");
        // "/models/北京" is 14 bytes; 7 fit, and 北 and 京 are 3 bytes each.
        write(&mut field, "/models/北京", Keep::Tail);
        assert_eq!((read(&field), field[7]), ("/北京".to_string(), 0));
        write(&mut field, "北京北京", Keep::Head);
        assert_eq!(read(&field), "北京");
        write(&mut field, "x", Keep::Tail);
        assert_eq!((read(&field), &field[1..]), ("x".to_string(), &[0u8; 7][..]));
    }
}
