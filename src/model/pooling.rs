//! Last-token pooling happens in the encoder (it keeps only the last position); this is what follows it:
//! L2 normalisation and Matryoshka truncation.

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
    fn dims_outside_the_range_are_errors() {
        assert_eq!(check_dim(32, 64).unwrap(), 32);
        assert_eq!(check_dim(64, 64).unwrap(), 64);
        for bad in [31, 65, 0, -1] {
            let msg = check_dim(bad, 64).unwrap_err().to_string();
            assert!(msg.contains("between 32 and 64"), "{msg}");
        }
    }
}
