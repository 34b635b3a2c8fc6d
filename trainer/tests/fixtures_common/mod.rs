//! Reading the PyTorch reference fixtures (`tests/data/fixtures/*.safetensors`, documented in the
//! reference README): a file's tensors, the JSON of its `fixture` metadata, and the comparisons
//! the fixture tests share.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixtures")
}

/// One fixture file: its tensors and the JSON of its `fixture` metadata.
pub struct Fixture {
    pub name: String,
    pub tensors: HashMap<String, Tensor>,
    pub info: Value,
}

impl Fixture {
    /// `tests/data/fixtures/<file>.safetensors`, which must hold `method`.
    pub fn read(file: &str, method: &str) -> Fixture {
        let path = fixture_dir().join(format!("{file}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let json = meta.metadata().as_ref().and_then(|m| m.get("fixture")).expect("`fixture` metadata key");
        let info: Value = serde_json::from_str(json).expect("fixture metadata is JSON");
        assert_eq!(info["method"], method, "{} holds another method", path.display());
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).expect("fixture tensors");
        Fixture { name: file.to_string(), tensors, info }
    }

    pub fn t(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("{}: no tensor {key}", self.name))
    }

    pub fn hp(&self, key: &str) -> f64 {
        self.info["hparams"][key].as_f64().unwrap_or_else(|| panic!("{}: no hyperparameter {key}", self.name))
    }

    pub fn hp_usize(&self, key: &str) -> usize {
        self.hp(key) as usize
    }

    pub fn scalar(&self, key: &str) -> f64 {
        f64::from(self.t(key).to_scalar::<f32>().unwrap())
    }

    pub fn mask(&self, key: &str) -> Vec<bool> {
        self.t(key).to_vec1::<u8>().unwrap().into_iter().map(|v| v == 1).collect()
    }
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

/// max |got - want|.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape");
    to_f64(got).iter().zip(to_f64(want)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}
