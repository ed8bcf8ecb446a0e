//! Where the model runs and in which dtype, from the words users write (`qwen_embed.device`, `qwen_embed.dtype`,
//! the benchmark's and tests' flags).

use candle_core::{DType, Device};

use crate::precision::Precision;

/// `auto` (the first CUDA GPU if built with the `cuda` feature and one is usable, else the CPU), `cpu`, `cuda`,
/// `cuda:N`. An explicit CUDA device that cannot be used is an error naming the reason.
pub fn select_device(setting: &str) -> Result<Device, String> {
    let setting = setting.to_ascii_lowercase();
    match setting.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(cuda_device(0).unwrap_or(Device::Cpu)),
        "cuda" => cuda_device(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda_device(n),
            _ => Err(format!("\"{setting}\" is not a device: use auto, cpu, cuda or cuda:N")),
        },
    }
}

/// The device's kind as settings and `qwen_embed.info()` spell it.
pub fn device_name(device: &Device) -> &'static str {
    if device.is_cpu() {
        "cpu"
    } else {
        "cuda"
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| format!("CUDA device {ordinal} is not usable: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device, String> {
    Err("qwen_embed was built without CUDA support (cargo feature \"cuda\")".into())
}

/// `auto`, `f32`, `bf16` or `f16` for a device; what `auto` means is [`Precision::auto`]'s rule.
pub fn select_dtype(setting: &str, device: &Device) -> Result<DType, String> {
    match setting.to_ascii_lowercase().as_str() {
        "auto" => Ok(Precision::auto(device).weights()),
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(format!("\"{other}\" is not a dtype: use auto, f32, bf16 or f16")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_resolve_or_explain() {
        assert!(select_device("CPU").unwrap().is_cpu());
        assert!(select_device("gpu").unwrap_err().contains("use auto, cpu, cuda or cuda:N"));
        #[cfg(not(feature = "cuda"))]
        {
            assert!(select_device("auto").unwrap().is_cpu(), "auto falls back to the CPU");
            assert!(select_device("cuda:1").unwrap_err().contains("built without CUDA support"));
        }
        assert_eq!(select_dtype("bf16", &Device::Cpu).unwrap(), DType::BF16);
        assert_eq!(select_dtype("float32", &Device::Cpu).unwrap(), DType::F32);
        assert!(select_dtype("int8", &Device::Cpu).unwrap_err().contains("use auto, f32, bf16 or f16"));
    }
}
