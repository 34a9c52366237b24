//! Takes the one `.tflite` out of a release archive (`.tgz`) as it streams in: nothing else of
//! the archive (checkpoints, frozen graph) touches the disk, and nothing is held in memory.

use std::io::{self, Read, Write};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

/// The largest `.tflite` taken out of an archive, in bytes: the release's largest file (1.0_224,
/// float) is 16.9 MB. A gzip stream within the download limit could otherwise unpack to far more
/// than the disk holds.
pub const MAX_TFLITE_BYTES: u64 = 64 << 20;

/// The `.tflite` copied out of an archive.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Why no `.tflite` came out of an archive.
#[derive(Debug)]
pub enum ArchiveError {
    /// The archive ended without a file of that name; lists what it held.
    Missing {
        /// The file names seen (at most a few, for the message).
        seen: Vec<String>,
    },
    /// The gzip or tar stream is cut short or malformed (or the source failed: the caller
    /// knows which).
    Corrupt(String),
    /// Writing the copy failed.
    Write(io::Error),
}

/// Copies the regular file called `wanted` (matched by file name: release archives put their
/// files under `./` or a folder) out of the gzipped tar `archive` into `out`, hashing it on the
/// way. With `read_rest`, then reads the archive to its end, so that gzip's CRC vouches for the
/// whole stream; without, stops after the file (the caller then relies on a known digest and
/// saves the rest of the download).
pub fn extract_file<R: Read>(
    archive: R,
    wanted: &str,
    out: &mut impl Write,
    read_rest: bool,
) -> Result<Extracted, ArchiveError> {
    let corrupt = |e: io::Error| ArchiveError::Corrupt(e.to_string());
    let mut tar = tar::Archive::new(GzDecoder::new(archive));
    let mut seen = Vec::new();
    let mut found = None;
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if found.is_some() {
            // Reading the rest: tar reads through each entry's bytes on its way to the next.
            continue;
        }
        let name = entry
            .path()
            .map_err(corrupt)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name != wanted || !entry.header().entry_type().is_file() {
            if seen.len() < 8 && !name.is_empty() {
                seen.push(name);
            }
            continue;
        }
        let size = entry.header().size().map_err(corrupt)?;
        // The archive is compressed: its size limit does not bound what it unpacks to.
        if size > MAX_TFLITE_BYTES {
            return Err(ArchiveError::Corrupt(format!(
                "{wanted} claims {size} bytes; no release file is over {MAX_TFLITE_BYTES}"
            )));
        }
        let extracted = copy_hashed(&mut entry, out)?;
        // A plain tar cut inside the file reads as a short file, not an error: count.
        if extracted.bytes != size {
            return Err(ArchiveError::Corrupt(format!(
                "{wanted} is cut short: {} of its {size} bytes",
                extracted.bytes
            )));
        }
        found = Some(extracted);
        if !read_rest {
            break;
        }
    }
    let Some(found) = found else {
        return Err(ArchiveError::Missing { seen });
    };
    if read_rest {
        // Past tar's end-of-archive blocks, up to gzip's trailer and its CRC check.
        let mut gz = tar.into_inner();
        io::copy(&mut gz, &mut io::sink()).map_err(corrupt)?;
    }
    Ok(found)
}

/// Copies `from` into `to` and hashes it; a read error is the archive's, a write error ours.
fn copy_hashed(from: &mut impl Read, to: &mut impl Write) -> Result<Extracted, ArchiveError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArchiveError::Corrupt(e.to_string())),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(ArchiveError::Write)?;
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Extracted { sha256, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    fn tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Default::default()));
        for (path, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn takes_the_file_by_name_under_any_folder() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let archive = tgz(&[("./a.ckpt.meta", b"junk"), ("./m.tflite", &data)]);
        for read_rest in [false, true] {
            let mut out = Vec::new();
            let got = extract_file(&archive[..], "m.tflite", &mut out, read_rest).unwrap();
            assert_eq!(out, data);
            assert_eq!(got.bytes, data.len() as u64);
            assert_eq!(got.sha256, crate::engine::pool::sha256_hex(&data));
        }
        let archive = tgz(&[("dir/m.tflite", b"x")]);
        let mut out = Vec::new();
        extract_file(&archive[..], "m.tflite", &mut out, true).unwrap();
        assert_eq!(out, b"x");
    }

    #[test]
    fn a_file_claiming_more_than_any_release_file_is_refused_unread() {
        // A header alone: nothing of the claimed size follows, as in a gzip bomb's first block.
        let mut header = tar::Header::new_gnu();
        header.set_path("./m.tflite").unwrap();
        header.set_size(MAX_TFLITE_BYTES + 1);
        header.set_mode(0o644);
        header.set_cksum();
        let mut gz = GzEncoder::new(Vec::new(), Default::default());
        gz.write_all(header.as_bytes()).unwrap();
        let archive = gz.finish().unwrap();
        let mut out = Vec::new();
        let err = extract_file(&archive[..], "m.tflite", &mut out, false).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Corrupt(m) if m.contains("claims")),
            "{err:?}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn says_what_is_missing_or_cut() {
        let archive = tgz(&[("./a.pb", b"junk")]);
        let err = extract_file(&archive[..], "m.tflite", &mut Vec::new(), true).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Missing { seen } if seen == &["a.pb"]),
            "{err:?}"
        );
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let archive = tgz(&[("./m.tflite", &data), ("./b.txt", b"tail")]);
        let cut = &archive[..archive.len() / 2];
        let err = extract_file(cut, "m.tflite", &mut Vec::new(), false).unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
        // Cut after the file: only reading the rest notices.
        let cut = &archive[..archive.len() - 4];
        assert!(extract_file(cut, "m.tflite", &mut Vec::new(), false).is_ok());
        let err = extract_file(cut, "m.tflite", &mut Vec::new(), true).unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
    }
}
