//! Micro-slices: which labelled images a run evaluates, read from a folder plus label file,
//! an ImageFolder tree, a folder of `<synset>_<name>.JPEG` files or a slice manifest; and the
//! `slice` command that draws a reproducible manifest from a full val folder.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::ClassName;

/// The manifest format tag written by `edgeverify slice`.
pub const MANIFEST_FORMAT: &str = "edgeverify-slice/1";

/// One image of a slice.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceEntry {
    /// The path as listed in the slice, relative to the slice's root folder.
    pub file: String,
    /// Where to read it.
    pub path: PathBuf,
    /// Ground-truth class index.
    pub label: usize,
    /// sha256 recorded in a manifest, checked when the image is read.
    pub expected_sha256: Option<String>,
}

/// An ordered list of labelled images, and how it was read.
#[derive(Debug, Clone)]
pub struct Slice {
    pub root: PathBuf,
    /// `labels-file`, `image-folder`, `synset-prefixed` or `manifest`.
    pub kind: String,
    /// Where the labels came from.
    pub labels_source: String,
    pub entries: Vec<SliceEntry>,
    /// Images the slice lists that cannot be evaluated, with the reason (missing files).
    pub missing: Vec<(String, String)>,
}

/// The on-disk manifest (`edgeverify slice` writes it, every loader accepts it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Folder holding the images, relative to the manifest file (or absolute).
    pub root: String,
    /// How the slice was drawn, for the record.
    #[serde(default)]
    pub drawn_from: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    pub images: Vec<ManifestImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestImage {
    pub file: String,
    pub label: usize,
    pub sha256: String,
}

const IMAGE_EXTENSIONS: [&str; 4] = ["jpeg", "jpg", "png", "jfif"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_synset(name: &str) -> bool {
    name.len() == 9 && name.starts_with('n') && name[1..].bytes().all(|b| b.is_ascii_digit())
}

impl Slice {
    /// Reads a slice from `path`: a manifest (`.json`), or a folder whose layout decides the
    /// kind. `labels` overrides the folder's own label file. Labels must be below
    /// `classes.len()`.
    pub fn load(path: &Path, labels: Option<&Path>, classes: &[ClassName]) -> Result<Slice> {
        Slice::load_rooted(path, labels, classes, None)
    }

    /// As [`Slice::load`]; `root` overrides a manifest's image folder (for a manifest copied
    /// away from its images, e.g. onto a board).
    pub fn load_rooted(
        path: &Path,
        labels: Option<&Path>,
        classes: &[ClassName],
        root: Option<&Path>,
    ) -> Result<Slice> {
        if root.is_some() && !path.is_file() {
            bail!("--slice-root applies to a slice manifest; {} is a folder", path.display());
        }
        if !path.exists() {
            bail!(
                "slice {}: no such file or folder (pass --slice a folder or manifest)",
                path.display()
            );
        }
        let slice = if path.is_file() {
            load_manifest(path, root)?
        } else if let Some(labels) = labels {
            load_labelled_folder(path, labels, false)?
        } else if path.join("val.txt").is_file() {
            load_labelled_folder(path, &path.join("val.txt"), true)?
        } else {
            load_synset_layout(path, classes)?
        };
        if slice.entries.is_empty() && slice.missing.is_empty() {
            bail!("slice {}: no images to evaluate (the slice is empty)", path.display());
        }
        for e in &slice.entries {
            if e.label >= classes.len() {
                bail!(
                    "slice {}: {} has label {}, outside the model's {} classes (0..{}); the \
                     label file does not belong to this model",
                    path.display(),
                    e.file,
                    e.label,
                    classes.len(),
                    classes.len() - 1
                );
            }
        }
        Ok(slice)
    }

    /// Reads a calibration set: any slice form, or a plain folder of images (calibration needs
    /// no labels; those of an unlabelled folder are recorded as 0 and never read).
    pub fn load_for_calibration(path: &Path, classes: &[ClassName]) -> Result<Slice> {
        let plain_folder = path.is_dir()
            && !path.join("val.txt").is_file()
            && load_synset_layout(path, classes).is_err();
        if !plain_folder {
            return Slice::load(path, None, classes);
        }
        let entries: Vec<SliceEntry> = list_images(path)?
            .into_iter()
            .map(|file| SliceEntry {
                path: path.join(&file),
                file,
                label: 0,
                expected_sha256: None,
            })
            .collect();
        if entries.is_empty() {
            bail!("calibration folder {} holds no JPEG or PNG images", path.display());
        }
        Ok(Slice {
            root: path.to_path_buf(),
            kind: "unlabelled-folder".into(),
            labels_source: "none (calibration needs no labels)".into(),
            entries,
            missing: vec![],
        })
    }

    /// The slice's identity: sha256 over its `(file, label, content sha256)` list in order.
    pub fn identity(&self, content_sha256: &[Option<String>]) -> String {
        let mut h = Sha256::new();
        for (e, sha) in self.entries.iter().zip(content_sha256) {
            h.update(format!("{}\t{}\t{}\n", e.file, e.label, sha.as_deref().unwrap_or("-")));
        }
        for (file, _) in &self.missing {
            h.update(format!("{file}\tmissing\n"));
        }
        hex(&h.finalize())
    }
}

/// Parses a `<file> <class index>` label file into a map.
pub fn read_label_file(path: &Path) -> Result<BTreeMap<String, usize>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read label file {}", path.display()))?;
    let mut labels = BTreeMap::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(file), Some(label), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!(
                "label file {} line {}: expected `<file> <class index>`, got {line:?}",
                path.display(),
                n + 1
            );
        };
        let label: usize = label.parse().with_context(|| {
            format!("label file {} line {}: {label:?} is not a class index", path.display(), n + 1)
        })?;
        // The same file listed twice with one label is harmless; with two, one is wrong.
        if let Some(previous) = labels.insert(file.to_string(), label) {
            if previous != label {
                bail!(
                    "label file {} line {}: {file} is labelled {label} here but {previous} on \
                     line {}; keep one line per image",
                    path.display(),
                    n + 1,
                    first_line[file]
                );
            }
        }
        first_line.entry(file.to_string()).or_insert(n + 1);
    }
    Ok(labels)
}

fn list_images(dir: &Path) -> Result<Vec<String>> {
    let mut files = vec![];
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        // `is_file` follows symlinks: a folder of links to images is a folder of images.
        if entry.path().is_file() && is_image(&entry.path()) {
            files.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(files)
}

/// A folder of images with a label file. When the label file is the folder's own (`val.txt`),
/// it defines the slice: a listed file that is absent is a failure. An outside label file
/// (`--labels`, e.g. all 50,000 val labels) is ground truth: only present files are evaluated,
/// and every present image must have a label.
fn load_labelled_folder(dir: &Path, labels_path: &Path, own: bool) -> Result<Slice> {
    let labels = read_label_file(labels_path)?;
    let present = list_images(dir)?;
    let unlabelled: Vec<&String> = present.iter().filter(|f| !labels.contains_key(*f)).collect();
    if !unlabelled.is_empty() {
        bail!(
            "label file {} does not match folder {}: {} of its {} images have no label (e.g. \
             {}); pass --labels with the ground truth of these images",
            labels_path.display(),
            dir.display(),
            unlabelled.len(),
            present.len(),
            unlabelled[0]
        );
    }
    let mut entries = vec![];
    let mut missing = vec![];
    if own {
        for (file, &label) in &labels {
            let path = dir.join(file);
            if path.is_file() {
                entries.push(SliceEntry { file: file.clone(), path, label, expected_sha256: None });
            } else {
                missing.push((
                    file.clone(),
                    format!("listed in {} but absent", labels_path.display()),
                ));
            }
        }
    } else {
        for file in present {
            let label = labels[&file];
            entries.push(SliceEntry { path: dir.join(&file), file, label, expected_sha256: None });
        }
    }
    Ok(Slice {
        root: dir.to_path_buf(),
        kind: "labels-file".into(),
        labels_source: labels_path.display().to_string(),
        entries,
        missing,
    })
}

/// An ImageFolder tree (`<synset>/<file>`) or a flat folder of `<synset>_<name>.<ext>` files.
fn load_synset_layout(dir: &Path, classes: &[ClassName]) -> Result<Slice> {
    let index: HashMap<&str, usize> =
        classes.iter().enumerate().map(|(i, c)| (c.synset.as_str(), i)).collect();
    let lookup = |synset: &str, file: &str| -> Result<usize> {
        index.get(synset).copied().with_context(|| {
            format!(
                "{}: synset {synset} of {file} is not one of the model's classes",
                dir.display()
            )
        })
    };
    let mut entries = vec![];
    let mut subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| is_synset(&n.to_string_lossy())))
        .collect();
    subdirs.sort();
    let kind = if !subdirs.is_empty() {
        for sub in &subdirs {
            let synset = sub.file_name().unwrap_or_default().to_string_lossy().into_owned();
            for file in list_images(sub)? {
                let rel = format!("{synset}/{file}");
                let label = lookup(&synset, &rel)?;
                entries.push(SliceEntry {
                    path: sub.join(&file),
                    file: rel,
                    label,
                    expected_sha256: None,
                });
            }
        }
        "image-folder"
    } else {
        let files = list_images(dir)?;
        let mut unnamed = vec![];
        for file in files {
            match file.split_once('_').filter(|(s, _)| is_synset(s)) {
                Some((synset, _)) => {
                    let label = lookup(synset, &file)?;
                    entries.push(SliceEntry {
                        path: dir.join(&file),
                        file,
                        label,
                        expected_sha256: None,
                    });
                }
                None => unnamed.push(file),
            }
        }
        if entries.is_empty() {
            bail!(
                "slice folder {} has no labels: give it a val.txt (`<file> <class index>` per \
                 line), pass --labels FILE, lay it out as <synset>/<files>, or name the files \
                 <synset>_<name>.JPEG",
                dir.display()
            );
        }
        if let Some(first) = unnamed.first() {
            bail!(
                "slice folder {}: {} images are not named <synset>_<name> (e.g. {first}); rename \
                 them or pass --labels FILE",
                dir.display(),
                unnamed.len()
            );
        }
        "synset-prefixed"
    };
    Ok(Slice {
        root: dir.to_path_buf(),
        kind: kind.into(),
        labels_source: format!("synsets in file names ({kind})"),
        entries,
        missing: vec![],
    })
}

fn load_manifest(path: &Path, root_override: Option<&Path>) -> Result<Slice> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read slice manifest {}", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a slice manifest (JSON written by `edgeverify slice`); pass a folder or a \
             manifest",
            path.display()
        )
    })?;
    if manifest.format != MANIFEST_FORMAT {
        bail!(
            "slice manifest {}: format {:?}, this edgeverify reads {MANIFEST_FORMAT:?}",
            path.display(),
            manifest.format
        );
    }
    let root = match root_override {
        Some(r) => r.to_path_buf(),
        None => path.parent().unwrap_or(Path::new(".")).join(&manifest.root),
    };
    let mut entries = vec![];
    let mut missing = vec![];
    for img in manifest.images {
        let file_path = root.join(&img.file);
        if file_path.is_file() {
            entries.push(SliceEntry {
                file: img.file,
                path: file_path,
                label: img.label,
                expected_sha256: Some(img.sha256),
            });
        } else {
            missing.push((
                img.file,
                format!(
                    "listed in manifest {} but absent at {} (images moved? pass --slice-root \
                     with their folder)",
                    path.display(),
                    file_path.display()
                ),
            ));
        }
    }
    Ok(Slice {
        root,
        kind: "manifest".into(),
        labels_source: path.display().to_string(),
        entries,
        missing,
    })
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a byte slice, lower-case hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a file, streamed, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SplitMix64: a tiny, fully specified generator, so a seed draws the same slice (and, later,
/// the same synthetic weights) on every platform and every version of every dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (rejection sampling, no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Draws `count` images spread across classes: classes are visited in a seeded order, one
/// image each per round (a seeded choice within the class), until `count` are drawn.
pub fn draw_spread(slice: &Slice, count: usize, seed: u64) -> Vec<SliceEntry> {
    let mut rng = SplitMix64(seed);
    let mut by_class: BTreeMap<usize, Vec<&SliceEntry>> = BTreeMap::new();
    for e in &slice.entries {
        by_class.entry(e.label).or_default().push(e);
    }
    let mut classes: Vec<Vec<&SliceEntry>> = by_class.into_values().collect();
    for members in &mut classes {
        rng.shuffle(members);
    }
    rng.shuffle(&mut classes);
    let mut drawn = vec![];
    let mut round = 0;
    while drawn.len() < count && classes.iter().any(|c| c.len() > round) {
        for members in &classes {
            if drawn.len() == count {
                break;
            }
            if let Some(e) = members.get(round) {
                drawn.push((*e).clone());
            }
        }
        round += 1;
    }
    drawn.sort_by(|a, b| a.file.cmp(&b.file));
    drawn
}

/// Writes a manifest for `entries` at `out`, hashing each file; `root` is stored relative to
/// the manifest's folder when possible.
pub fn write_manifest(
    entries: &[SliceEntry],
    root: &Path,
    out: &Path,
    drawn_from: &str,
    seed: u64,
) -> Result<Manifest> {
    use rayon::prelude::*;
    let hashes: Vec<Result<String>> = entries.par_iter().map(|e| sha256_file(&e.path)).collect();
    let mut images = vec![];
    for (e, h) in entries.iter().zip(hashes) {
        images.push(ManifestImage { file: e.file.clone(), label: e.label, sha256: h? });
    }
    let out_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let root_abs = fs::canonicalize(root)?;
    let out_abs = fs::canonicalize(out_dir)
        .with_context(|| format!("output folder {} does not exist", out_dir.display()))?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        root: relative_path(&root_abs, &out_abs).display().to_string(),
        drawn_from: Some(drawn_from.to_string()),
        seed: Some(seed),
        images,
    };
    let json = serde_json::to_string_pretty(&manifest)?;
    crate::report::write_atomically(out, json.as_bytes())?;
    Ok(manifest)
}

/// `target` relative to `base` (both absolute), with `..` where needed.
fn relative_path(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    rel
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, label: usize) -> SliceEntry {
        SliceEntry { file: file.into(), path: file.into(), label, expected_sha256: None }
    }

    #[test]
    fn a_file_labelled_twice_differently_is_refused_with_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val.txt");
        std::fs::write(&path, "a.JPEG 3\nb.JPEG 4\na.JPEG 3\n").unwrap();
        assert_eq!(read_label_file(&path).unwrap().len(), 2, "a repeated identical line is fine");
        std::fs::write(&path, "a.JPEG 3\nb.JPEG 4\na.JPEG 5\n").unwrap();
        let err = format!("{:#}", read_label_file(&path).unwrap_err());
        assert!(err.contains("line 3: a.JPEG is labelled 5 here but 3 on line 1"), "{err}");
    }

    #[test]
    fn splitmix_is_the_published_sequence() {
        // First outputs of SplitMix64 seeded with 1234567 (Vigna's reference implementation).
        let mut r = SplitMix64(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn draw_spreads_across_classes_and_is_reproducible() {
        let entries: Vec<_> =
            (0..300).map(|i| entry(&format!("img{i:03}.JPEG"), i % 100)).collect();
        let slice = Slice {
            root: ".".into(),
            kind: "test".into(),
            labels_source: String::new(),
            entries,
            missing: vec![],
        };
        let a = draw_spread(&slice, 150, 7);
        let b = draw_spread(&slice, 150, 7);
        assert_eq!(a, b);
        let mut per_class = [0; 100];
        for e in &a {
            per_class[e.label] += 1;
        }
        assert!(per_class.iter().all(|&n| n == 1 || n == 2), "{per_class:?}");
        assert_ne!(a, draw_spread(&slice, 150, 8));
    }

    #[test]
    fn relative_paths_climb_where_needed() {
        assert_eq!(relative_path(Path::new("/a/b/c"), Path::new("/a/d")), Path::new("../b/c"));
        assert_eq!(relative_path(Path::new("/a"), Path::new("/a")), Path::new("."));
    }

    #[test]
    fn synset_names_are_recognised() {
        assert!(is_synset("n01440764"));
        assert!(!is_synset("n0144076"));
        assert!(!is_synset("ILSVRC2012"));
    }
}
