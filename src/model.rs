//! Model descriptions: what to run, how to prepare its input, which classes it predicts and
//! which accuracy claim it carries. Read from a TOML description, a Hugging Face-style folder
//! or a bare `.onnx` file; paths inside a description resolve relative to the description.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::preprocess::{Filter, PreprocessSpec};

/// The ImageNet-1k class list (synset and names, index order), public metadata.
const IMAGENET_CLASSES: &str = include_str!("../models/imagenet-1k-classes.txt");

/// One class: WordNet synset id (empty when unknown) and human-readable name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassName {
    pub synset: String,
    pub name: String,
}

/// The ImageNet-1k classes in the standard sorted-synset order (PyTorch, Hugging Face).
pub fn imagenet_classes() -> Vec<ClassName> {
    IMAGENET_CLASSES
        .lines()
        .map(|line| {
            let (synset, name) = line.split_once(' ').unwrap_or((line, ""));
            ClassName { synset: synset.to_string(), name: name.to_string() }
        })
        .collect()
}

/// A published accuracy claim and where it was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// Claimed top-1 accuracy, percent.
    pub top1: f64,
    /// Claimed top-5 accuracy, percent, when the source gives one.
    #[serde(default)]
    pub top5: Option<f64>,
    /// Where the claim comes from (paper, table, model card).
    pub source: String,
}

/// Everything edgeverify needs to know about a model, whatever it was described by.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    /// The f32 ONNX file.
    pub onnx_path: PathBuf,
    /// sha256 recorded in the description, checked before loading.
    pub expected_sha256: Option<String>,
    /// Graph input name; `None` takes the first input.
    pub input: Option<String>,
    /// Graph output name; `None` takes the first output.
    pub output: Option<String>,
    pub preprocess: PreprocessSpec,
    pub classes: Vec<ClassName>,
    pub claim: Option<Claim>,
    /// What edgeverify assumed rather than read (shown in the report).
    pub assumptions: Vec<String>,
    /// What the model was described by: `toml`, `hf-folder` or `onnx`.
    pub described_by: String,
    pub description_path: PathBuf,
}

/// The TOML description format (`models/*.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDescription {
    name: String,
    onnx: PathBuf,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    output: Option<String>,
    /// A class list file (`<synset> <names>` per line); default: ImageNet-1k.
    #[serde(default)]
    classes: Option<PathBuf>,
    #[serde(default)]
    claim: Option<Claim>,
    preprocess: TomlPreprocess,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlPreprocess {
    resize_shortest_edge: u32,
    crop_size: u32,
    filter: Filter,
    #[serde(default = "default_rescale")]
    rescale_factor: f64,
    mean: [f32; 3],
    std: [f32; 3],
}

fn default_rescale() -> f64 {
    1.0 / 255.0
}

impl ModelSpec {
    /// Reads a model from a TOML description, a Hugging Face-style folder or a bare ONNX file.
    pub fn load(path: &Path) -> Result<ModelSpec> {
        if !path.exists() {
            bail!(
                "model {}: no such file or folder; pass --model a .toml description (see \
                 models/), a Hugging Face-style folder or an .onnx file",
                path.display()
            );
        }
        if path.is_dir() {
            return load_hf_folder(path);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => load_toml(path),
            Some("onnx") => Ok(load_bare_onnx(path)),
            _ => bail!(
                "model {}: expected a .toml description, a Hugging Face-style folder or an .onnx \
                 file",
                path.display()
            ),
        }
    }

    /// Checks that the ONNX file exists and, when a sha256 is recorded, that it matches.
    /// Returns the file's sha256.
    pub fn check_onnx_file(&self) -> Result<String> {
        if !self.onnx_path.is_file() {
            let mut msg = format!(
                "model file {} (named by {}) does not exist",
                self.onnx_path.display(),
                self.description_path.display()
            );
            if self.onnx_path.file_name().is_some_and(|n| n == "convnext-tiny-224.onnx") {
                msg.push_str(
                    "; export it with models/export_convnext_onnx.py on a machine with \
                     internet (see README, \"Getting the real ConvNeXt-T\")",
                );
            }
            bail!(msg);
        }
        let sha = crate::dataset::sha256_file(&self.onnx_path)?;
        if let Some(expected) = &self.expected_sha256 {
            if !expected.eq_ignore_ascii_case(&sha) {
                bail!(
                    "model file {}: sha256 is {sha}, but {} records {expected}; the file is not \
                     the one described (re-export it, or update `sha256` if you changed it on \
                     purpose)",
                    self.onnx_path.display(),
                    self.description_path.display()
                );
            }
        }
        Ok(sha)
    }
}

fn load_toml(path: &Path) -> Result<ModelSpec> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read model description {}", path.display()))?;
    let desc: TomlDescription = toml::from_str(&text)
        .with_context(|| format!("model description {} is not valid", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let preprocess = PreprocessSpec {
        resize_shortest_edge: desc.preprocess.resize_shortest_edge,
        crop_size: desc.preprocess.crop_size,
        filter: desc.preprocess.filter,
        rescale_factor: desc.preprocess.rescale_factor,
        mean: desc.preprocess.mean,
        std: desc.preprocess.std,
    };
    preprocess.validate().with_context(|| format!("in {}", path.display()))?;
    let classes = match &desc.classes {
        Some(file) => read_class_file(&base.join(file))?,
        None => imagenet_classes(),
    };
    let expected_sha256 = desc.sha256.filter(|s| !s.trim().is_empty());
    Ok(ModelSpec {
        name: desc.name,
        onnx_path: base.join(desc.onnx),
        expected_sha256,
        input: desc.input,
        output: desc.output,
        preprocess,
        classes,
        claim: desc.claim,
        assumptions: vec![],
        described_by: "toml".into(),
        description_path: path.to_path_buf(),
    })
}

fn read_class_file(path: &Path) -> Result<Vec<ClassName>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read class list {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (synset, name) = line.split_once(' ').unwrap_or((line, ""));
            ClassName { synset: synset.to_string(), name: name.to_string() }
        })
        .collect())
}

fn load_bare_onnx(path: &Path) -> ModelSpec {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    ModelSpec {
        name,
        onnx_path: path.to_path_buf(),
        expected_sha256: None,
        input: None,
        output: None,
        preprocess: PreprocessSpec::imagenet_standard(),
        classes: imagenet_classes(),
        claim: None,
        assumptions: vec![
            "bare .onnx given: ImageNet-standard preprocessing assumed (shortest edge 256, \
             bicubic, center crop 224, mean 0.485/0.456/0.406, std 0.229/0.224/0.225) and \
             ImageNet-1k classes; describe the model in a .toml file if it differs"
                .into(),
        ],
        described_by: "onnx".into(),
        description_path: path.to_path_buf(),
    }
}

/// A Hugging Face model folder: `model.onnx` or `onnx/model.onnx`, `preprocessor_config.json`,
/// `config.json`.
fn load_hf_folder(dir: &Path) -> Result<ModelSpec> {
    let onnx_path = ["model.onnx", "onnx/model.onnx"]
        .iter()
        .map(|p| dir.join(p))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "model folder {}: no model.onnx or onnx/model.onnx in it (export one with \
                 models/export_convnext_onnx.py or optimum)",
                dir.display()
            )
        })?;
    let pre_path = dir.join("preprocessor_config.json");
    let pre: serde_json::Value = read_json(&pre_path)?;
    let preprocess = hf_preprocess(&pre).with_context(|| format!("in {}", pre_path.display()))?;
    let config_path = dir.join("config.json");
    let config: serde_json::Value = read_json(&config_path)?;
    let classes = hf_classes(&config).with_context(|| format!("in {}", config_path.display()))?;
    let name = config
        .get("_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
    Ok(ModelSpec {
        name,
        onnx_path,
        expected_sha256: None,
        input: None,
        output: None,
        preprocess,
        classes,
        claim: None,
        assumptions: vec![],
        described_by: "hf-folder".into(),
        description_path: dir.to_path_buf(),
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read_to_string(path).with_context(|| {
        format!("cannot read {} (a Hugging Face model folder needs it)", path.display())
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Translates a Hugging Face image processor configuration into a [`PreprocessSpec`].
///
/// Supported: ConvNeXt's processor (`crop_pct`: resize the shortest edge to
/// `int(shortest_edge / crop_pct)`, then center-crop `shortest_edge`), and processors with
/// `size.shortest_edge` plus a center crop (`crop_size`).
fn hf_preprocess(pre: &serde_json::Value) -> Result<PreprocessSpec> {
    let f = |key: &str| pre.get(key).and_then(|v| v.as_f64());
    let shortest = pre
        .get("size")
        .and_then(|s| s.get("shortest_edge").and_then(|v| v.as_u64()).or_else(|| s.as_u64()))
        .context("no size.shortest_edge: only shortest-edge resizing is supported")?
        as u32;
    let (resize, crop) = if let Some(crop_pct) = f("crop_pct") {
        if shortest >= 384 {
            bail!("shortest_edge {shortest} >= 384: ConvNeXt then warps without cropping, unsupported");
        }
        ((f64::from(shortest) / crop_pct) as u32, shortest)
    } else {
        let crop = pre
            .get("crop_size")
            .and_then(|c| c.get("height").and_then(|v| v.as_u64()).or_else(|| c.as_u64()))
            .context("neither crop_pct nor crop_size: cannot tell the center crop")?;
        (shortest, crop as u32)
    };
    let resample = pre.get("resample").and_then(|v| v.as_i64()).unwrap_or(3);
    let filter = Filter::from_pil_code(resample)
        .with_context(|| format!("resample {resample} is unsupported (2 bilinear, 3 bicubic)"))?;
    let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
        match pre.get(key) {
            None => Ok(default),
            Some(v) => {
                let vals: Vec<f32> = serde_json::from_value(v.clone())
                    .with_context(|| format!("{key} must be a list of numbers"))?;
                vals.try_into().map_err(|_| anyhow::anyhow!("{key} must have 3 values"))
            }
        }
    };
    let normalize = pre.get("do_normalize").and_then(|v| v.as_bool()).unwrap_or(true);
    let rescale = pre.get("do_rescale").and_then(|v| v.as_bool()).unwrap_or(true);
    let spec = PreprocessSpec {
        resize_shortest_edge: resize,
        crop_size: crop,
        filter,
        rescale_factor: if rescale { f("rescale_factor").unwrap_or(1.0 / 255.0) } else { 1.0 },
        mean: if normalize { triple("image_mean", [0.485, 0.456, 0.406])? } else { [0.0; 3] },
        std: if normalize { triple("image_std", [0.229, 0.224, 0.225])? } else { [1.0; 3] },
    };
    spec.validate()?;
    Ok(spec)
}

/// Class names from `config.json`'s `id2label`; ImageNet-1k synsets when it has 1,000 labels.
fn hf_classes(config: &serde_json::Value) -> Result<Vec<ClassName>> {
    let Some(map) = config.get("id2label").and_then(|v| v.as_object()) else {
        return Ok(imagenet_classes());
    };
    let mut names = vec![String::new(); map.len()];
    for (k, v) in map {
        let idx: usize =
            k.parse().with_context(|| format!("id2label key {k:?} is not an index"))?;
        let slot = names
            .get_mut(idx)
            .with_context(|| format!("id2label index {idx} outside 0..{}", map.len()))?;
        *slot = v.as_str().unwrap_or_default().to_string();
    }
    let synsets = if names.len() == 1000 { imagenet_classes() } else { vec![] };
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| ClassName {
            synset: synsets.get(i).map(|c| c.synset.clone()).unwrap_or_default(),
            name,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn class_list_has_the_thousand_imagenet_synsets() {
        let classes = imagenet_classes();
        assert_eq!(classes.len(), 1000);
        assert_eq!(classes[0].synset, "n01440764");
        assert_eq!(classes[999].synset, "n15075141");
    }

    #[test]
    fn convnext_processor_config_gives_256_then_224() {
        let pre = json!({
            "crop_pct": 0.875, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "image_processor_type": "ConvNextImageProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}
        });
        let spec = hf_preprocess(&pre).unwrap();
        assert_eq!((spec.resize_shortest_edge, spec.crop_size), (256, 224));
        assert_eq!(spec.filter, Filter::Bicubic);
        assert_eq!(spec.mean, [0.485, 0.456, 0.406]);
    }

    #[test]
    fn unsupported_processor_is_refused_with_the_reason() {
        let err = hf_preprocess(&json!({"size": {"height": 224, "width": 224}})).unwrap_err();
        assert!(err.to_string().contains("shortest_edge"), "{err}");
    }

    #[test]
    fn repository_descriptions_parse() {
        for file in ["models/convnext-tiny-224.toml", "models/efficientnet-lite0.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let spec = load_toml(&path).unwrap();
            assert!(spec.claim.is_some(), "{file}");
            assert_eq!(spec.classes.len(), 1000);
        }
    }
}
