//! Last-token pooling happens in the encoder (it keeps only the last position); this is what follows it:
//! L2 normalisation, Matryoshka truncation, and the weighted mean that turns chunk vectors into one document vector.

use crate::error::{Error, Result};

/// Smallest Matryoshka dimension accepted (Qwen3-Embedding is trained down to 32).
pub const MIN_DIM: usize = 32;

/// Scales `v` to unit length. A zero vector stays zero (as `torch.nn.functional.normalize` leaves it).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if norm > 1e-12 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Checks a requested Matryoshka dimension against the model's hidden size.
pub fn check_dim(dim: i64, hidden: usize) -> Result<usize> {
    if dim < MIN_DIM as i64 || dim > hidden as i64 {
        return Err(Error::BadDim { dim, min: MIN_DIM, max: hidden });
    }
    Ok(dim as usize)
}

/// Keeps the first `dim` components of an embedding and renormalises (Matryoshka representation).
pub fn truncate_dim(mut v: Vec<f32>, dim: usize) -> Vec<f32> {
    v.truncate(dim);
    l2_normalize(&mut v);
    v
}

/// How chunk vectors are weighted in a document's vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// Every chunk counts the same.
    Uniform,
    /// The first and last chunks (introduction, conclusion) count twice as much as the middle one, linearly between.
    Position,
    /// Each chunk counts by its token count, so a short trailing chunk does not weigh as much as a full one.
    Tokens,
}

impl std::str::FromStr for Weighting {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "uniform" => Ok(Weighting::Uniform),
            "position" => Ok(Weighting::Position),
            "tokens" => Ok(Weighting::Tokens),
            _ => Err(Error::BadWeighting(s.to_string())),
        }
    }
}

impl std::fmt::Display for Weighting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Weighting::Uniform => "uniform",
            Weighting::Position => "position",
            Weighting::Tokens => "tokens",
        })
    }
}

impl Weighting {
    /// One weight per chunk, given each chunk's token count.
    pub fn weights(self, chunk_tokens: &[usize]) -> Vec<f64> {
        let n = chunk_tokens.len();
        match self {
            Weighting::Uniform => vec![1.0; n],
            Weighting::Tokens => chunk_tokens.iter().map(|&t| t as f64).collect(),
            Weighting::Position if n < 2 => vec![1.0; n],
            // 2 at both ends, 1 in the middle: 1 + |2i/(n-1) - 1|.
            Weighting::Position => (0..n).map(|i| 1.0 + (2.0 * i as f64 / (n - 1) as f64 - 1.0).abs()).collect(),
        }
    }
}

/// The weighted mean of unit vectors, renormalised to unit length.
pub fn weighted_mean<V: AsRef<[f32]>>(vectors: &[V], weights: &[f64]) -> Vec<f32> {
    let dim = vectors.first().map_or(0, |v| v.as_ref().len());
    let mut sum = vec![0f64; dim];
    for (v, &w) in vectors.iter().zip(weights) {
        sum.iter_mut().zip(v.as_ref()).for_each(|(s, &x)| *s += w * x as f64);
    }
    let mut mean: Vec<f32> = sum.into_iter().map(|x| x as f32).collect();
    l2_normalize(&mut mean);
    mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0; 4];
        l2_normalize(&mut zero);
        assert_eq!(zero, vec![0.0; 4]);
    }

    #[test]
    fn matryoshka_keeps_a_renormalised_prefix() {
        let v = truncate_dim(vec![3.0, 4.0, 12.0], 2);
        assert_eq!(v, vec![0.6, 0.8]);
    }

    #[test]
    fn position_weighting_favours_both_ends() {
        assert_eq!(Weighting::Position.weights(&[9; 5]), vec![2.0, 1.5, 1.0, 1.5, 2.0]);
        assert_eq!(Weighting::Position.weights(&[9]), vec![1.0]);
        assert_eq!(Weighting::Tokens.weights(&[10, 3]), vec![10.0, 3.0]);
        assert_eq!("Uniform".parse::<Weighting>().unwrap(), Weighting::Uniform);
        assert!("median".parse::<Weighting>().is_err());
    }

    #[test]
    fn weighted_mean_is_renormalised() {
        let v = weighted_mean(&[vec![1.0, 0.0], vec![0.0, 1.0]], &[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn dims_outside_the_range_are_errors() {
        assert_eq!(check_dim(32, 64).unwrap(), 32);
        assert_eq!(check_dim(64, 64).unwrap(), 64);
        for bad in [31, 65, 0, -1] {
            let msg = check_dim(bad, 64).unwrap_err().to_string();
            assert!(msg.contains("between 32 and 64"), "{msg}");
        }
    }
}
