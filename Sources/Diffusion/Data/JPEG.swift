import CJPEG
import Foundation

/// JPEG decoding through libjpeg(-turbo): grey files give 1 channel, every
/// other colour space 3 (RGB). A truncated file is an error.
public enum JPEG {
    /// The largest image decoded, in pixels (a guard against decompression bombs).
    public static let maximumPixels = 1 << 28

    /// True when `bytes` start with a JPEG start-of-image marker.
    public static func hasSignature<Bytes: Collection>(_ bytes: Bytes) -> Bool where Bytes.Element == UInt8 {
        Array(bytes.prefix(3)) == [0xFF, 0xD8, 0xFF]
    }

    /// Decodes a JPEG file's bytes; `path` only names the file in errors.
    public static func decode(_ bytes: [UInt8], path: String = "<memory>") throws -> PixelImage {
        var image = diffuse_jpeg_image()
        let success = bytes.withUnsafeBufferPointer { buffer in
            diffuse_jpeg_decode(buffer.baseAddress, buffer.count, UInt(maximumPixels), &image)
        }
        guard success == 1, let pixels = image.pixels else {
            throw DatasetError.malformed(path: path, reason: "JPEG: " + PNG.message(from: &image.message))
        }
        defer { free(pixels) }
        let (width, height, channels) = (Int(image.width), Int(image.height), Int(image.channels))
        let samples = Array(UnsafeBufferPointer(start: pixels, count: width * height * channels))
        return PixelImage(width: width, height: height, channels: channels, samples: samples)
    }
}

/// Reading image files whatever their format.
public enum ImageFile {
    /// File extensions image folders look at (compared case-insensitively).
    public static let extensions: Set<String> = ["png", "jpg", "jpeg"]

    /// Reads and decodes the PNG or JPEG at `path`, recognised by its first
    /// bytes (not its name). Errors name the file.
    public static func read(_ path: String) throws -> PixelImage {
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "permission denied or not a regular file" : "no such file"
            throw DatasetError.unreadable(path: path, reason: reason)
        }
        let bytes = [UInt8](data)
        if PNG.hasSignature(bytes) { return try PNG.decode(bytes, path: path) }
        if JPEG.hasSignature(bytes) { return try JPEG.decode(bytes, path: path) }
        throw DatasetError.malformed(path: path, reason: bytes.isEmpty ? "empty file" : "neither a PNG nor a JPEG file")
    }
}
