//! Splitting a long document into chunks of at most a token budget, cut where the text has a natural boundary.
//!
//! The planner works on the document's tokens and their byte offsets, so it never counts a token twice and never cuts
//! inside a character: a cut may only fall where one token ends at or before the next begins (byte-level BPE splits
//! some characters across tokens with overlapping offsets). Cuts are byte positions, so with no overlap the chunk
//! texts concatenate back to the document exactly, whitespace included.
//!
//! Inside each window the planner prefers, in order: a paragraph break, a sentence end, a line break, a space, any
//! token boundary; it takes the furthest cut of the best kind in the window's second half, so chunks stay near the
//! budget. An overlapping chunk starts at the best boundary inside the overlap region.

use std::ops::Range;

use crate::error::{Error, Result};

/// The smallest budget accepted: a window must hold more than one character's tokens (a character can be up to
/// five byte-level tokens, with the space before it).
pub const MIN_CHUNK_TOKENS: usize = 16;

/// How good a place to cut is: higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Boundary {
    Token,
    Word,
    Line,
    Sentence,
    Paragraph,
}

/// Checks a chunk budget (tokens the model sees per chunk, closing token included) and an overlap.
pub fn check_chunking(chunk_tokens: usize, overlap: usize, max_length: usize) -> Result<()> {
    let problem = if chunk_tokens < MIN_CHUNK_TOKENS {
        format!("chunk_tokens must be at least {MIN_CHUNK_TOKENS}, got {chunk_tokens}")
    } else if chunk_tokens > max_length {
        format!("chunk_tokens {chunk_tokens} exceeds max_length {max_length}")
    } else if overlap > chunk_tokens / 2 {
        format!("overlap must be at most half of chunk_tokens ({}), got {overlap}", chunk_tokens / 2)
    } else {
        return Ok(());
    };
    Err(Error::BadChunking(problem))
}

/// Byte ranges of `text` for chunks of at most `content_tokens` tokens each, consecutive chunks sharing at most
/// `overlap` tokens. `offsets` are the byte offsets of the tokens of `text` (no special tokens added).
pub fn plan_chunks(text: &str, offsets: &[(usize, usize)], content_tokens: usize, overlap: usize) -> Vec<Range<usize>> {
    let n = offsets.len();
    if n <= content_tokens {
        let whole = 0..text.len();
        return vec![whole];
    }
    // cut[i]: where the text may be cut before token i (None inside a character). cut[0] = 0 and cut[n] = end.
    let mut cut: Vec<Option<usize>> = (0..=n)
        .map(|i| match i {
            0 => Some(0),
            i if i == n => Some(text.len()),
            i if offsets[i - 1].1 <= offsets[i].0 && text.is_char_boundary(offsets[i].0) => Some(offsets[i].0),
            _ => None,
        })
        .collect();
    cut[n] = Some(text.len());
    let kind = |i: usize| cut[i].map(|at| boundary_at(text, at));

    let mut chunks = Vec::new();
    let mut start = 0usize; // token index
    loop {
        if n - start <= content_tokens {
            chunks.push(cut[start].unwrap()..text.len());
            return chunks;
        }
        let window = start + 1..=start + content_tokens;
        let second_half = start + content_tokens.div_ceil(2)..=start + content_tokens;
        let end = best_cut(second_half, &kind, true)
            .or_else(|| best_cut(window, &kind, true))
            .expect("a window of MIN_CHUNK_TOKENS tokens holds a cut");
        chunks.push(cut[start].unwrap()..cut[end].unwrap());
        // Start the next chunk at the best boundary inside the overlap (never at `start` again, so it progresses).
        let back = overlap.min(end - start - 1);
        start = best_cut(end - back..=end - 1, &kind, false).unwrap_or(end);
    }
}

/// The best cut in `range` (token indices): highest boundary kind, then the furthest (`latest`) or earliest.
fn best_cut(
    range: std::ops::RangeInclusive<usize>,
    kind: &dyn Fn(usize) -> Option<Boundary>,
    latest: bool,
) -> Option<usize> {
    let scored = range.filter_map(|i| kind(i).map(|k| (k, i)));
    if latest {
        scored.max_by_key(|&(k, i)| (k, i)).map(|(_, i)| i)
    } else {
        scored.max_by_key(|&(k, i)| (k, std::cmp::Reverse(i))).map(|(_, i)| i)
    }
}

/// What kind of boundary a cut at byte `at` would be, judged by the text just before it.
fn boundary_at(text: &str, at: usize) -> Boundary {
    let before = &text[..at];
    let after = &text[at..];
    let trimmed = before.trim_end_matches([' ', '\t']);
    if trimmed.ends_with("\n\n") || trimmed.ends_with("\r\n\r\n") {
        return Boundary::Paragraph;
    }
    let last = trimmed.trim_end().chars().next_back();
    let spaced = trimmed.len() < before.len() || trimmed.ends_with('\n') || after.starts_with(char::is_whitespace);
    match last {
        Some('。' | '！' | '？' | '…') => Boundary::Sentence,
        Some('.' | '!' | '?') if spaced => Boundary::Sentence,
        _ if trimmed.ends_with('\n') => Boundary::Line,
        _ if spaced || before.ends_with(char::is_whitespace) => Boundary::Word,
        _ => Boundary::Token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per word with its leading space and trailing newlines, like byte-level BPE on plain English.
    fn word_offsets(text: &str) -> Vec<(usize, usize)> {
        let starts: Vec<usize> = text
            .char_indices()
            .filter(|&(i, c)| i == 0 || c == ' ' || (text[..i].ends_with('\n') && !c.is_whitespace()))
            .map(|(i, _)| i)
            .collect();
        starts.iter().zip(starts.iter().skip(1).chain([&text.len()])).map(|(&s, &e)| (s, e)).collect()
    }

    #[test]
    fn a_short_text_is_one_chunk() {
        let text = "One short sentence.";
        assert_eq!(plan_chunks(text, &word_offsets(text), 100, 10), vec![0..text.len()]);
    }

    #[test]
    fn chunks_without_overlap_concatenate_to_the_text_and_respect_the_budget() {
        let text = "First sentence here. Second one follows it.\n\nA new paragraph starts. It goes on and on \
                    with many words that never end in a period but keep going";
        let offsets = word_offsets(text);
        let chunks = plan_chunks(text, &offsets, 10, 0);
        assert!(chunks.len() > 2, "{chunks:?}");
        assert_eq!(chunks.iter().map(|r| &text[r.clone()]).collect::<String>(), text);
        for r in &chunks {
            let tokens = offsets.iter().filter(|o| o.0 >= r.start && o.1 <= r.end).count();
            assert!(tokens <= 10, "{:?} has {tokens} tokens", &text[r.clone()]);
        }
        // A paragraph end beats the sentence ends and words after it.
        assert_eq!(&text[chunks[0].clone()], "First sentence here. Second one follows it.\n\n");
        // A sentence end beats the later word boundaries.
        let text = "Alpha beta gamma. Delta epsilon zeta eta theta iota kappa";
        assert_eq!(&text[plan_chunks(text, &word_offsets(text), 6, 0)[0].clone()], "Alpha beta gamma.");
    }

    #[test]
    fn overlapping_chunks_cover_the_text_in_order() {
        let text = (0..200).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
        let offsets = word_offsets(&text);
        let chunks = plan_chunks(&text, &offsets, 20, 5);
        assert_eq!(chunks[0].start, 0);
        assert_eq!(chunks.last().unwrap().end, text.len());
        for pair in chunks.windows(2) {
            assert!(pair[1].start > pair[0].start && pair[1].start < pair[0].end, "{pair:?}");
            let shared = offsets.iter().filter(|o| o.0 >= pair[1].start && o.1 <= pair[0].end).count();
            assert!((1..=5).contains(&shared), "{shared} tokens shared");
        }
    }

    #[test]
    fn never_cuts_inside_a_character() {
        // "😀" is four byte-level tokens with overlapping offsets: only whole characters may be cut apart.
        let text = "😀".repeat(50);
        let offsets: Vec<(usize, usize)> = (0..50).flat_map(|c| [(4 * c, 4 * c + 4); 4]).collect();
        let chunks = plan_chunks(&text, &offsets, 18, 0);
        assert_eq!(chunks.iter().map(|r| &text[r.clone()]).collect::<String>(), text);
        assert!(chunks.iter().all(|r| r.len() % 4 == 0 && r.len() <= 16), "{chunks:?}");
    }

    #[test]
    fn budgets_are_checked() {
        assert!(check_chunking(512, 64, 8192).is_ok());
        for (c, o, m) in [(8, 0, 8192), (9000, 0, 8192), (100, 51, 8192)] {
            assert!(check_chunking(c, o, m).is_err(), "{c} {o} {m}");
        }
    }
}
