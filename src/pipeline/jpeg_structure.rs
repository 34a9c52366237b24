//! A JPEG's marker structure, read without decoding: how many scans it has and whether an
//! end-of-image marker closes them. Both are checked before any decoder runs.
//!
//! Why count scans: each scan of a progressive JPEG visits every block of the components it
//! codes, yet costs only a few bytes when it codes nothing (end-of-band runs). A 98 KB file of
//! 1,010 such scans at 12 MP kept libjpeg busy for 7.8 s, and 5,010 at 36 MP for 106 s;
//! zune-jpeg refuses more than 100 scans. libjpeg-turbo's scan limit (TJPARAM_SCANLIMIT, after
//! the LJT-01-004 audit finding) exists for the same reason.

/// The most scans decoded: zune-jpeg's own limit, so that `resize=fast` (libjpeg) and
/// `resize=exact` (zune-jpeg) refuse the same files. Encoders write about 10 (libjpeg's
/// `jpeg_simple_progression`: 10 for colour, 6 for grayscale; baseline files have 1 per colour
/// component at most).
pub const MAX_SCANS: usize = 100;

/// What [`read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Structure {
    /// Start-of-scan markers of the main image (not of an embedded thumbnail, whose segment is
    /// skipped whole).
    pub scans: usize,
    /// Whether an end-of-image marker follows the last scan's entropy-coded data.
    pub complete: bool,
}

/// Walks the markers from the start-of-image marker to the first end-of-image marker after a
/// scan. Segments (markers from SOF0 up, but restarts, SOI and EOI) are skipped by their length
/// and entropy-coded data up to the next marker (in it, an FF byte is followed by 00 or a
/// restart marker). Bytes that are not a marker where one should be are skipped, as libjpeg
/// does; a file that ends first is not complete. Where libjpeg would read on, so does this
/// count: it may count more scans than a decoder reaches, never fewer.
pub fn read(bytes: &[u8]) -> Structure {
    let mut scans = 0;
    let complete = walk(bytes, &mut scans).is_some();
    Structure { scans, complete }
}

/// [`read`]'s walk, counting into `scans`: `Some` at the end-of-image marker after a scan,
/// `None` where the bytes end first.
fn walk(bytes: &[u8], scans: &mut usize) -> Option<()> {
    let mut at = 2; // after FF D8
    loop {
        // The next marker: FF, any fill FFs, then its code.
        at += memchr::memchr(0xFF, bytes.get(at..)?)?;
        while bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let code = *bytes.get(at + 1)?;
        at += 2;
        match code {
            0xD9 if *scans > 0 => return Some(()),
            // Standalone markers (no length), a stuffed zero outside a scan, and the reserved
            // codes below SOF0: skipped alone. libjpeg, resynchronising after a bad restart,
            // discards a reserved marker and reads on byte by byte, so a length after one must
            // not hide the scans that follow from this count.
            0x00..=0xBF | 0xD0..=0xD9 => {}
            _ => {
                let len = bytes.get(at..at + 2)?;
                at += usize::from(u16::from_be_bytes([len[0], len[1]]));
                if code == 0xDA {
                    *scans += 1;
                    at = end_of_entropy_data(bytes, at);
                }
            }
        }
    }
}

/// The offset of the first marker after entropy-coded data that starts at `at` (or the end).
fn end_of_entropy_data(bytes: &[u8], mut at: usize) -> usize {
    while let Some(ff) = memchr::memchr(0xFF, bytes.get(at..).unwrap_or_default()) {
        at += ff;
        match bytes.get(at + 1) {
            Some(0x00 | 0xD0..=0xD7) => at += 2,
            _ => return at,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// SOI, an APP0-like segment, SOF, then `scans` scans of entropy data with a stuffed FF 00
    /// and a restart marker in each, then EOI.
    fn synthetic(scans: usize) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 6, 0xFF, 0xDA, 0xFF, 0xD9];
        out.extend([0xFF, 0xC2, 0, 3, 9]);
        for _ in 0..scans {
            out.extend([
                0xFF, 0xDA, 0, 4, 1, 2, 0x11, 0xFF, 0x00, 0x22, 0xFF, 0xD3, 0x33,
            ]);
        }
        out.extend([0xFF, 0xD9]);
        out
    }

    #[test]
    fn scans_are_counted_past_stuffed_bytes_restarts_and_segment_contents() {
        for n in [1, 10, 101] {
            let jpeg = synthetic(n);
            assert_eq!(
                read(&jpeg),
                Structure {
                    scans: n,
                    complete: true
                }
            );
            for cut in 0..jpeg.len() - 1 {
                assert!(!read(&jpeg[..cut]).complete, "{n} scans, cut at {cut}");
            }
        }
    }

    /// Bytes rich in what a marker is made of.
    fn byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(0xFF),
            Just(0xDA),
            Just(0xD9),
            Just(0xD8),
            Just(0),
            any::<u8>()
        ]
    }

    /// A segment (any non-scan marker, contents of any bytes) or a scan (header, then entropy
    /// data whose FF bytes are followed by 00 or a restart marker, as an encoder writes).
    fn part() -> impl Strategy<Value = (bool, Vec<u8>)> {
        let segment = (0xC0u8..=0xFE, proptest::collection::vec(byte(), 0..40))
            .prop_filter("not a scan or a standalone marker", |(code, _)| {
                !matches!(code, 0xD0..=0xDA)
            })
            .prop_map(|(code, body)| {
                let len = (body.len() + 2) as u16;
                let mut out = vec![0xFF, code, (len >> 8) as u8, len as u8];
                out.extend(body);
                (false, out)
            });
        let scan = proptest::collection::vec(byte(), 0..40).prop_map(|data| {
            let mut out = vec![0xFF, 0xDA, 0, 3, 1];
            for (i, b) in data.into_iter().enumerate() {
                out.push(b);
                if b == 0xFF {
                    out.push(if i % 3 == 0 { 0xD0 + (i % 8) as u8 } else { 0 });
                }
            }
            (true, out)
        });
        prop_oneof![segment, scan]
    }

    #[test]
    fn a_reserved_marker_cannot_hide_scans_behind_a_length() {
        // FF 02 then what a segment length would be (0x7F00): libjpeg, resynchronising after a
        // bad restart, drops the marker and finds the scans behind it.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xDD, 0, 4, 0, 1];
        jpeg.extend([0xFF, 0xDA, 0, 3, 1, 0x11, 0xFF, 0x02, 0x7F, 0x00]);
        for _ in 0..200 {
            jpeg.extend([0xFF, 0xDA, 0, 3, 1, 0x22]);
        }
        jpeg.extend([0xFF, 0xD9]);
        assert_eq!(
            read(&jpeg),
            Structure {
                scans: 201,
                complete: true
            }
        );
    }

    proptest! {
        #[test]
        fn any_file_of_segments_and_scans_is_read_exactly(
            parts in proptest::collection::vec(part(), 1..30)
        ) {
            let mut jpeg = vec![0xFF, 0xD8];
            for (_, bytes) in &parts {
                jpeg.extend(bytes);
            }
            jpeg.extend([0xFF, 0xD9]);
            let scans = parts.iter().filter(|(scan, _)| *scan).count();
            prop_assert_eq!(read(&jpeg), Structure { scans, complete: scans > 0 });
            for cut in 0..jpeg.len() - 1 {
                prop_assert!(!read(&jpeg[..cut]).complete);
            }
        }

        #[test]
        fn any_bytes_are_read_without_panicking(bytes in proptest::collection::vec(byte(), 0..400)) {
            let structure = read(&bytes);
            prop_assert!(structure.scans <= bytes.len() / 4);
        }
    }

    #[test]
    fn fill_bytes_junk_and_trailing_data_are_tolerated() {
        let mut jpeg = synthetic(3);
        // Fill bytes before a marker, junk between segments, data after the end.
        jpeg.splice(2..2, [0xFF, 0xFF, 0xFF]);
        jpeg.splice(2..2, [0x12, 0x34]);
        jpeg.extend(b"trailing \xFF\xDA\x00\x02 bytes");
        assert_eq!(
            read(&jpeg),
            Structure {
                scans: 3,
                complete: true
            }
        );
    }

    #[test]
    fn real_encoders_files_have_few_scans() {
        let (w, h) = (64, 48);
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let image = image::RgbImage::from_raw(w as u32, h as u32, pixels.clone()).unwrap();
        let mut baseline = std::io::Cursor::new(Vec::new());
        image
            .write_to(&mut baseline, image::ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(
            read(baseline.get_ref()),
            Structure {
                scans: 1,
                complete: true
            }
        );
        // mozjpeg's defaults (its own optimised progression), then libjpeg's simple one.
        for simple in [false, true] {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            c.set_size(w, h);
            if simple {
                c.set_progressive_mode();
            }
            let mut started = c.start_compress(Vec::new()).unwrap();
            started.write_scanlines(&pixels).unwrap();
            let structure = read(&started.finish().unwrap());
            assert!(structure.complete);
            assert!(
                (2..=MAX_SCANS / 4).contains(&structure.scans),
                "simple {simple}: {structure:?}"
            );
        }
    }
}
