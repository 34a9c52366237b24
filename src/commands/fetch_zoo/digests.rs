//! The sha256 of each `.tflite` of the release that the repository knows, from
//! `models/tflite/SHA256SUMS` (built into the binary, so a fetched file is checked against what
//! was reviewed into the repository, not against anything the server says).
//!
//! Those are the 13 files in the zoo our machines share (`../shared/models/tflite`), byte for
//! byte as Google published them: the `_quant` files of alpha 0.75, 0.5 and 0.25 and the float
//! 0.25_224. Adding a line there (after checking the file) makes its variant fetchable without
//! `--allow-unverified`.

/// `sha256sum` output: `<hex>  <file name>` per line.
const SUMS: &str = include_str!("../../../models/tflite/SHA256SUMS");

/// Where the table lives in the repository, for messages.
pub const SOURCE: &str = "models/tflite/SHA256SUMS";

/// Every `(file name, lowercase hex digest)` of the table.
pub fn known() -> impl Iterator<Item = (&'static str, &'static str)> {
    SUMS.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (hex, file) = line.split_once(char::is_whitespace)?;
        // `sha256sum` marks binary mode with `*` before the name.
        Some((file.trim_start().trim_start_matches('*'), hex))
    })
}

/// The expected digest of `file` (a `.tflite` file name), when the repository knows it.
pub fn known_digest(file: &str) -> Option<&'static str> {
    known().find(|(name, _)| *name == file).map(|(_, hex)| hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fetch_zoo::grid::ZooFile;

    #[test]
    fn the_table_names_release_files_with_well_formed_digests() {
        let names: Vec<String> = ZooFile::all().iter().map(ZooFile::tflite_name).collect();
        let mut count = 0;
        for (file, hex) in known() {
            count += 1;
            assert!(names.iter().any(|n| n == file), "{file} is no release file");
            assert_eq!(hex.len(), 64, "{file}");
            assert!(
                hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{file}"
            );
        }
        // The lines of the shared zoo's SHA256SUMS, no more, no fewer.
        assert_eq!(count, 13);
        assert_eq!(
            known_digest("mobilenet_v1_0.25_224.tflite"),
            Some("446ec673881cd46371a8726075b714194ada39d144762260cb76d15318597df7")
        );
        assert_eq!(known_digest("mobilenet_v1_1.0_224.tflite"), None);
    }
}
