//! Decoding and preprocessing: every format, orientation, limits and broken input; the resize
//! compared pixel for pixel with Pillow.

use crate::common;

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use mobilenet_serve::kernels::Tier;
use mobilenet_serve::pipeline::decode::{decode, DecodeLimits};
use mobilenet_serve::pipeline::preprocess::{preprocess, Normalization};
use mobilenet_serve::Error;

use common::images::png_claiming;

fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 7 + y * 13) % 256) as u8,
            ((x * x + 3 * y) % 256) as u8,
            ((x * y * 5 + 11) % 256) as u8,
        ])
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

/// Our preprocessing with the identity normalisation, back to bytes; every kernel tier of this
/// CPU must give the same.
fn our_crop(img: &RgbImage, rho: usize) -> Vec<u8> {
    let id = Normalization {
        scale: 1.0,
        offset: 0.0,
    };
    let crop = |tier| -> Vec<u8> {
        preprocess(img, rho, id, tier)
            .unwrap()
            .into_iter()
            .map(|v| v as u8)
            .collect()
    };
    let scalar = crop(Tier::Scalar);
    for tier in Tier::supported() {
        assert_eq!(crop(tier), scalar, "{tier} differs from the scalar tier");
    }
    scalar
}

#[test]
fn resize_and_crop_match_pillow_exactly() {
    let text = include_str!("../fixtures/pillow_resize.txt");
    let mut lines = text.lines();
    let mut cases = 0;
    while let (Some(head), Some(hex)) = (lines.next(), lines.next()) {
        let v: Vec<usize> = head
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse().unwrap())
            .collect();
        let (w, h, rho) = (v[0] as u32, v[1] as u32, v[2]);
        let want: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let ours = our_crop(&pattern(w, h), rho);
        let diffs = ours.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            diffs,
            0,
            "{w}x{h} -> {rho}: {diffs} of {} bytes differ from Pillow",
            want.len()
        );
        cases += 1;
    }
    assert_eq!(cases, 6);
}

#[test]
fn normalisation_maps_to_minus_one_one() {
    let img = RgbImage::from_fn(40, 40, |x, _| {
        if x < 20 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let out = preprocess(&img, 32, Normalization::default(), Tier::Scalar).unwrap();
    let (lo, hi) = out
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert_eq!((lo, hi), (-1.0, 1.0));
}

#[test]
fn decodes_every_supported_format() {
    let img = DynamicImage::ImageRgb8(pattern(33, 21));
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Bmp,
        ImageFormat::Gif,
        ImageFormat::WebP,
    ] {
        let bytes = encode(&img, format);
        let out = decode(&bytes, &limits()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(out.dimensions(), (33, 21), "{format:?}");
        // Lossless formats give the pixels back; lossy ones stay close on average.
        let err: f64 = out
            .as_raw()
            .iter()
            .zip(img.to_rgb8().as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / out.as_raw().len() as f64;
        let bound = match format {
            ImageFormat::Png | ImageFormat::Bmp | ImageFormat::WebP => 0.0,
            _ => 40.0,
        };
        assert!(err <= bound, "{format:?}: mean abs error {err}");
    }
}

#[test]
fn grayscale_alpha_and_16_bit_become_rgb8() {
    let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(5, 4, image::Luma([77])));
    let out = decode(&encode(&gray, ImageFormat::Png), &limits()).unwrap();
    assert_eq!(out.get_pixel(2, 2), &Rgb([77, 77, 77]));
    let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        5,
        4,
        image::Rgba([10, 20, 30, 0]),
    ));
    let out = decode(&encode(&rgba, ImageFormat::Png), &limits()).unwrap();
    assert_eq!(out.get_pixel(0, 0), &Rgb([10, 20, 30]));
    let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
        5,
        4,
        Rgb([65535u16, 0, 32896]),
    ));
    let out = decode(&encode(&deep, ImageFormat::Png), &limits()).unwrap();
    assert_eq!(out.get_pixel(4, 3), &Rgb([255, 0, 128]));
}

/// A JPEG with an EXIF APP1 segment carrying `orientation`.
fn jpeg_with_orientation(img: &DynamicImage, orientation: u16) -> Vec<u8> {
    let jpeg = encode(img, ImageFormat::Jpeg);
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, next IFD = 0
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    // Left half black, right half white, 40x20.
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    }));
    let plain = decode(&jpeg_with_orientation(&img, 1), &limits()).unwrap();
    assert_eq!(plain.dimensions(), (40, 20));
    // 6 = rotate 90 degrees clockwise to display: the left half ends up on top.
    let rotated = decode(&jpeg_with_orientation(&img, 6), &limits()).unwrap();
    assert_eq!(rotated.dimensions(), (20, 40));
    assert!(rotated.get_pixel(10, 5)[0] < 60, "top should be dark");
    assert!(rotated.get_pixel(10, 35)[0] > 200, "bottom should be light");
}

#[test]
fn huge_declared_dimensions_are_refused_before_decoding() {
    let err = decode(&png_claiming(65535, 65535), &limits()).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    let small = DecodeLimits {
        max_bytes: 1 << 20,
        max_pixels: 100,
    };
    let err = decode(
        &encode(&DynamicImage::ImageRgb8(pattern(20, 20)), ImageFormat::Png),
        &small,
    )
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge(m) if m.contains("400 pixels")));
}

#[test]
fn oversized_bodies_are_refused() {
    let tight = DecodeLimits {
        max_bytes: 100,
        max_pixels: 1 << 20,
    };
    let bytes = encode(&DynamicImage::ImageRgb8(pattern(30, 30)), ImageFormat::Png);
    assert!(matches!(decode(&bytes, &tight), Err(Error::TooLarge(_))));
}

#[test]
fn broken_input_gives_typed_errors_never_panics() {
    assert!(matches!(decode(b"", &limits()), Err(Error::Undecodable(_))));
    assert!(matches!(
        decode(b"<html>hello</html>", &limits()),
        Err(Error::Undecodable(_))
    ));
    assert!(matches!(
        decode(b"II*\0\x08\0\0\0garbage", &limits()),
        Err(Error::UnsupportedFormat(_))
    ));
    for format in [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Bmp,
    ] {
        let bytes = encode(&DynamicImage::ImageRgb8(pattern(64, 48)), format);
        for cut in (1..bytes.len()).step_by(bytes.len() / 25 + 1) {
            // Some decoders pad a truncated stream with grey; either outcome is fine, a panic is not.
            if let Err(e) = decode(&bytes[..cut], &limits()) {
                assert!(
                    matches!(e, Error::Undecodable(_) | Error::UnsupportedFormat(_)),
                    "{format:?} cut at {cut}: {e}"
                );
            }
        }
        let mut corrupt = bytes.clone();
        for i in (20..corrupt.len()).step_by(7) {
            corrupt[i] ^= 0x5A;
        }
        let _ = decode(&corrupt, &limits());
    }
}
