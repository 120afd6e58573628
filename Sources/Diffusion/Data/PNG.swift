import CPNG
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// PNG decoding and encoding through libpng.
///
/// Decoding gives 8-bit grey or RGB: palette images become RGB, grey below 8
/// bits is expanded, 16-bit samples are scaled to 8 bits (`round(v × 255 / 65535)`),
/// alpha is dropped (not composited), and no gamma correction is applied, so the
/// samples are the file's own values (what Pillow's `convert("RGB")`/`"L"` gives
/// for 8-bit files). Encoding writes 8-bit grey, grey+alpha, RGB or RGBA.
public enum PNG {
    /// The largest image decoded, in pixels (a guard against decompression bombs).
    public static let maximumPixels = 1 << 28

    /// True when `bytes` start with the PNG signature.
    public static func hasSignature<Bytes: Collection>(_ bytes: Bytes) -> Bool where Bytes.Element == UInt8 {
        Array(bytes.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    }

    /// Decodes a PNG file's bytes; `path` only names the file in errors.
    public static func decode(_ bytes: [UInt8], path: String = "<memory>") throws -> PixelImage {
        var image = diffuse_png_image()
        let success = bytes.withUnsafeBufferPointer { buffer in
            diffuse_png_decode(buffer.baseAddress, buffer.count, UInt(maximumPixels), &image)
        }
        guard success == 1, let pixels = image.pixels else {
            throw DatasetError.malformed(path: path, reason: "PNG: " + message(from: &image.message))
        }
        defer { free(pixels) }
        let (width, height, channels) = (Int(image.width), Int(image.height), Int(image.channels))
        let samples = Array(UnsafeBufferPointer(start: pixels, count: width * height * channels))
        return PixelImage(width: width, height: height, channels: channels, samples: samples).droppingAlpha()
    }

    /// The PNG file bytes of `image` (zlib level `compressionLevel`, 0…9), with a text chunk for each
    /// of `text` (key, value) after the header (see ``textChunk(key:value:)``).
    public static func encode(_ image: PixelImage, compressionLevel: Int = 6, text: [(key: String, value: String)]) throws -> [UInt8] {
        try insertingText(text, into: encode(image, compressionLevel: compressionLevel))
    }

    /// The PNG file bytes of `image` (zlib level `compressionLevel`, 0…9).
    public static func encode(_ image: PixelImage, compressionLevel: Int = 6) throws -> [UInt8] {
        var output: UnsafeMutablePointer<UInt8>?
        var size = 0
        var text = [CChar](repeating: 0, count: 256)
        let success = image.samples.withUnsafeBufferPointer { buffer in
            text.withUnsafeMutableBufferPointer { message in
                diffuse_png_encode(buffer.baseAddress, UInt32(image.width), UInt32(image.height), UInt32(image.channels),
                                   Int32(Swift.min(Swift.max(compressionLevel, 0), 9)), &output, &size, message.baseAddress)
            }
        }
        guard success == 1, let output else {
            let reason = text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw DatasetError.malformed(path: "<PNG encoder>", reason: "cannot encode a \(image.width)×\(image.height)×\(image.channels) image: \(reason)")
        }
        defer { free(output) }
        return Array(UnsafeBufferPointer(start: output, count: size))
    }

    /// Writes `image` as a PNG at `path`, atomically (a temporary file in the same
    /// folder, then a rename), so a reader never sees half a file.
    /// With `text`, a text chunk for each (key, value) pair, as ``encode(_:compressionLevel:text:)``.
    public static func write(_ image: PixelImage, to path: String, compressionLevel: Int = 6,
                             text: [(key: String, value: String)] = []) throws {
        try AtomicFile.write(try encode(image, compressionLevel: compressionLevel, text: text), to: path)
    }

    /// The C string in a fixed-size C character array.
    static func message<Tuple>(from tuple: inout Tuple) -> String {
        withUnsafeBytes(of: &tuple) { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            let end = bytes.firstIndex(of: 0) ?? bytes.count
            return String(decoding: bytes[0..<end], as: UTF8.self)
        }
    }
}

/// Writing whole files atomically.
public enum AtomicFile {
    /// Writes `bytes` to a temporary file beside `path`, then renames it over
    /// `path`: readers see the old file or the new one, never a partial one, and a
    /// crash leaves at most a stray `.<name>.<pid>.<uuid>.tmp`.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let temporary = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).\(getpid()).\(UUID().uuidString).tmp").path
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw DatasetError.unreadable(path: path, reason: "cannot create \(temporary): \(String(cString: strerror(errno)))")
        }
        var written = 0
        var failure: String?
        bytes.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress else { return }
            while written < buffer.count {
                let result = systemWrite(descriptor, base + written, buffer.count - written)
                if result < 0 {
                    if errno == EINTR { continue }
                    failure = String(cString: strerror(errno))
                    return
                }
                written += result
            }
        }
        if close(descriptor) != 0 && failure == nil { failure = String(cString: strerror(errno)) }
        if failure == nil && rename(temporary, url.path) != 0 { failure = String(cString: strerror(errno)) }
        if let failure {
            unlink(temporary)
            throw DatasetError.unreadable(path: path, reason: "cannot write: \(failure)")
        }
    }
}

/// POSIX `write(2)` (named apart from `AtomicFile.write`).
private func systemWrite(_ descriptor: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(descriptor, buffer, count)
    #else
    return Darwin.write(descriptor, buffer, count)
    #endif
}
