//! IDX files (the MNIST family's format): a big-endian header — magic number, then one u32 per
//! dimension — followed by unsigned bytes. Files may be gzipped; gzip is recognised by its magic
//! bytes 1f 8b, so a decompressed file keeps working whatever its name.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{DataError, Split};
use crate::config::Dataset;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Header and pixel bytes of an IDX image file, checked for consistency.
struct IdxImages<'a> {
    count: usize,
    rows: usize,
    cols: usize,
    pixels: &'a [u8],
}

/// Loads one split of MNIST or Fashion-MNIST from `dir`, finding each file raw or gzipped.
pub(super) fn load_split(dataset: Dataset, dir: &Path, train: bool) -> Result<Split, DataError> {
    let (images_name, labels_name) = super::idx_names(train);
    let hint = format!(
        "run `crt-trainer data fetch {name} --data-dir {parent}` or put your own IDX files there",
        name = dataset.as_str(),
        parent = dir.parent().unwrap_or(dir).display()
    );
    let images = find_file(dir, images_name, &hint)?;
    let labels = find_file(dir, labels_name, &hint)?;
    let (_, h, w) = dataset.image_shape();
    load_idx_files(&images, &labels, (h, w))
}

/// Loads an IDX image file and its IDX label file (either may be gzipped); images must be `rows x cols`.
pub fn load_idx_files(images_path: &Path, labels_path: &Path, size: (usize, usize)) -> Result<Split, DataError> {
    let image_bytes = read_maybe_gzip(images_path)?;
    let images = parse_images(&image_bytes, images_path)?;
    if (images.rows, images.cols) != size {
        return Err(DataError::Dims {
            path: images_path.to_path_buf(),
            expected: format!("{}x{}", size.0, size.1),
            found: format!("{}x{}", images.rows, images.cols),
        });
    }
    let label_bytes = read_maybe_gzip(labels_path)?;
    let labels = parse_labels(&label_bytes, labels_path)?;
    if labels.len() != images.count {
        return Err(DataError::CountMismatch {
            images: images_path.to_path_buf(),
            labels: labels_path.to_path_buf(),
            image_count: images.count,
            label_count: labels.len(),
        });
    }
    let pixels = images.pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
    Split::new(pixels, labels.to_vec(), (1, size.0, size.1))
}

/// `dir/name` if it exists, else `dir/name.gz`, else an error saying where the file belongs.
fn find_file(dir: &Path, name: &str, hint: &str) -> Result<PathBuf, DataError> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing { path: raw, hint: hint.to_string() })
}

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip { path: path.to_path_buf(), source })?;
    Ok(out)
}

fn parse_images<'a>(bytes: &'a [u8], path: &Path) -> Result<IdxImages<'a>, DataError> {
    let header = header(bytes, path, IMAGES_MAGIC, "IDX unsigned-byte images, 3 dimensions", 3)?;
    let [count, rows, cols] = [header[0], header[1], header[2]];
    let expected = 16 + (count as u64) * (rows as u64) * (cols as u64);
    check_length(bytes, path, expected, || format!("header: {count} images of {rows}x{cols}"))?;
    Ok(IdxImages { count, rows, cols, pixels: &bytes[16..] })
}

fn parse_labels<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8], DataError> {
    let count = header(bytes, path, LABELS_MAGIC, "IDX unsigned-byte labels, 1 dimension", 1)?[0];
    check_length(bytes, path, 8 + count as u64, || format!("header: {count} labels"))?;
    let labels = &bytes[8..];
    let classes = Dataset::Mnist.classes();
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| usize::from(l) >= classes) {
        return Err(DataError::BadLabel { path: path.to_path_buf(), index, label, classes });
    }
    Ok(labels)
}

/// Checks the magic number and returns the `dims` dimension sizes that follow it.
fn header(bytes: &[u8], path: &Path, magic: u32, what: &'static str, dims: usize) -> Result<Vec<usize>, DataError> {
    let header_len = 4 * (1 + dims);
    if bytes.len() < header_len {
        return Err(DataError::Length {
            path: path.to_path_buf(),
            why: format!("at least a {header_len}-byte header of {what}"),
            expected: header_len as u64,
            found: bytes.len() as u64,
        });
    }
    let words: Vec<u32> =
        bytes[..header_len].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    if words[0] != magic {
        return Err(DataError::BadMagic { path: path.to_path_buf(), what, expected: magic, found: words[0] });
    }
    Ok(words[1..].iter().map(|&d| d as usize).collect())
}

fn check_length(bytes: &[u8], path: &Path, expected: u64, why: impl FnOnce() -> String) -> Result<(), DataError> {
    let found = bytes.len() as u64;
    if found == expected {
        return Ok(());
    }
    Err(DataError::Length { path: path.to_path_buf(), why: why(), expected, found })
}
