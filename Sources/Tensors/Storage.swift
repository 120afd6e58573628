import Foundation

/// The element type a tensor's memory holds.
///
/// All arithmetic happens in `float32`. `float16` and `bfloat16` are storage
/// types: a half-precision tensor converts to `float32` when an op reads it,
/// which is how checkpoints are loaded and how mixed precision keeps saved
/// activations small.
public enum DataType: String, Sendable, CaseIterable {
    case float32
    case float16
    case bfloat16

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .float32: return 4
        case .float16, .bfloat16: return 2
        }
    }
}

/// A reference-counted, 64-byte aligned block of memory. Freed when the last
/// tensor that views it goes away.
public final class Storage: @unchecked Sendable {
    /// Raw bytes.
    public let bytes: UnsafeMutableRawPointer
    /// Number of elements of `dataType`.
    public let count: Int
    public let dataType: DataType

    /// Allocates uninitialised memory for `count` elements.
    public init(count: Int, dataType: DataType = .float32) {
        precondition(count >= 0, "Storage: negative element count \(count)")
        self.count = count
        self.dataType = dataType
        owner = nil
        let byteCount = Swift.max(count * dataType.byteSize, 1)
        bytes = BufferPool.shared.allocate(byteCount: byteCount)
        Storage.liveBytes.add(byteCount)
    }

    /// Allocates memory filled with zeros.
    public convenience init(zeros count: Int, dataType: DataType = .float32) {
        self.init(count: count, dataType: dataType)
        memset(bytes, 0, Swift.max(count * dataType.byteSize, 1))
    }

    /// What keeps borrowed memory alive (a file mapping); nil for memory of the buffer pool.
    private let owner: AnyObject?

    /// Memory owned by `owner` (e.g. a memory-mapped checkpoint), not copied: the storage
    /// keeps `owner` alive and never frees the bytes itself. The bytes must stay valid and
    /// writable (a private, copy-on-write mapping is) for as long as `owner` lives, and be
    /// aligned to `dataType`'s size.
    public init(borrowing bytes: UnsafeMutableRawPointer, count: Int, dataType: DataType, owner: AnyObject) {
        precondition(count >= 0, "Storage: negative element count \(count)")
        precondition(Int(bitPattern: bytes) % dataType.byteSize == 0, "Storage(borrowing:): bytes not aligned to \(dataType)")
        self.bytes = bytes
        self.count = count
        self.dataType = dataType
        self.owner = owner
    }

    /// True when the bytes belong to another object (a mapped file) rather than the buffer pool
    /// (memory of ``outsidePool(count:dataType:)`` is the process's own: not borrowed).
    public var isBorrowed: Bool { owner != nil && !(owner is ProcessOwnedMemory) }

    /// Uninitialised memory mapped from the system for this storage alone, outside the buffer
    /// pool (nil if the mapping fails): for parameters about to be replaced or loaded. Pages
    /// never written cost nothing, and the pool's high-water mark never counts them — a
    /// placeholder model of 3.3 GB that 16-bit weights then replace let the pool cache up to
    /// 1.7 GB of activations it had no need for.
    public static func outsidePool(count: Int, dataType: DataType = .float32) -> Storage? {
        precondition(count >= 0, "Storage: negative element count \(count)")
        guard let mapping = AnonymousMapping(byteCount: Swift.max(count * dataType.byteSize, 1)) else { return nil }
        return Storage(borrowing: mapping.bytes, count: count, dataType: dataType, owner: mapping)
    }

    deinit {
        guard owner == nil else { return }
        let byteCount = Swift.max(count * dataType.byteSize, 1)
        Storage.liveBytes.add(-byteCount)
        BufferPool.shared.release(bytes, byteCount: byteCount)
    }

    /// The memory as `Float` elements. Only valid for `float32` storage.
    @inline(__always)
    public var floats: UnsafeMutablePointer<Float> {
        bytes.assumingMemoryBound(to: Float.self)
    }

    /// The memory as 16-bit words. Only valid for half-precision storage.
    @inline(__always)
    public var halfWords: UnsafeMutablePointer<UInt16> {
        bytes.assumingMemoryBound(to: UInt16.self)
    }

    /// Bytes currently held by all storages of the process (for memory tests
    /// and the training log).
    public static var allocatedBytes: Int { liveBytes.value }
    static let liveBytes = AtomicCounter()
}

/// A small lock-protected counter.
final class AtomicCounter: @unchecked Sendable {
    private var storedValue = 0
    private let lock = NSLock()
    func add(_ delta: Int) {
        lock.lock(); storedValue += delta; lock.unlock()
    }
    var value: Int {
        lock.lock(); defer { lock.unlock() }
        return storedValue
    }
}

/// Conversions between `Float` and the 16-bit storage formats.
public enum HalfPrecision {
    /// IEEE 754 binary16, round to nearest even (hardware conversion).
    @inline(__always)
    public static func float16Bits(_ value: Float) -> UInt16 {
        Float16(value).bitPattern
    }

    @inline(__always)
    public static func float(fromFloat16 bits: UInt16) -> Float {
        Float(Float16(bitPattern: bits))
    }

    /// bfloat16: the top 16 bits of a Float, rounded to nearest even;
    /// NaN stays NaN.
    @inline(__always)
    public static func bfloat16Bits(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let roundingBias: UInt32 = 0x7FFF + ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
    }

    @inline(__always)
    public static func float(fromBFloat16 bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// Converts `count` floats into 16-bit words of the given type.
    public static func encode(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, count: Int, as dataType: DataType) {
        switch dataType {
        case .float16:
            for index in 0..<count { destination[index] = float16Bits(source[index]) }
        case .bfloat16:
            // Eight at a time, the same rounding as `bfloat16Bits` (NaN kept quiet) without its branch.
            var index = 0
            while index + 8 <= count {
                let value = UnsafeRawPointer(source + index).loadUnaligned(as: SIMD8<Float>.self)
                let bits = unsafeBitCast(value, to: SIMD8<UInt32>.self)
                let rounded = (bits &+ (0x7FFF &+ ((bits &>> 16) & 1))) &>> 16
                let result = rounded.replacing(with: (bits &>> 16) | 0x0040, where: value .!= value)
                UnsafeMutableRawPointer(destination + index).storeBytes(of: SIMD8<UInt16>(truncatingIfNeeded: result), as: SIMD8<UInt16>.self)
                index += 8
            }
            while index < count {
                destination[index] = bfloat16Bits(source[index])
                index += 1
            }
        case .float32:
            fatalError("HalfPrecision.encode: float32 is not a 16-bit type")
        }
    }

    /// Converts `count` 16-bit words of the given type into floats.
    public static func decode(_ source: UnsafePointer<UInt16>, into destination: UnsafeMutablePointer<Float>, count: Int, as dataType: DataType) {
        guard dataType != .float32 else { fatalError("HalfPrecision.decode: float32 is not a 16-bit type") }
        // Split over the workers when large: 16-bit weights are widened on every call of their layer.
        if count >= 1 << 17 {
            Parallel.forEach(count, grain: 1 << 16) { range in
                decodeSerial(source + range.lowerBound, into: destination + range.lowerBound, count: range.count, as: dataType)
            }
        } else {
            decodeSerial(source, into: destination, count: count, as: dataType)
        }
    }

    /// `decode` on the calling thread, eight words at a time (F16C's `vcvtph2ps` for float16,
    /// a shift for bfloat16).
    private static func decodeSerial(_ source: UnsafePointer<UInt16>, into destination: UnsafeMutablePointer<Float>, count: Int,
                                     as dataType: DataType) {
        var index = 0
        while index + 8 <= count {
            let words = UnsafeRawPointer(source + index).loadUnaligned(as: SIMD8<UInt16>.self)
            let values: SIMD8<Float>
            if dataType == .float16 {
                values = SIMD8<Float>(unsafeBitCast(words, to: SIMD8<Float16>.self))
            } else {
                values = unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: words) &<< 16, to: SIMD8<Float>.self)
            }
            UnsafeMutableRawPointer(destination + index).storeBytes(of: values, as: SIMD8<Float>.self)
            index += 8
        }
        while index < count {
            destination[index] = dataType == .float16 ? float(fromFloat16: source[index]) : float(fromBFloat16: source[index])
            index += 1
        }
    }
}

/// An owner of storage memory that is the process's own (not a file's): `isBorrowed` is false.
protocol ProcessOwnedMemory: AnyObject {}

/// Anonymous memory from `mmap`, unmapped when the last storage over it goes.
final class AnonymousMapping: ProcessOwnedMemory {
    let bytes: UnsafeMutableRawPointer
    let byteCount: Int

    init?(byteCount: Int) {
        guard let mapping = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              mapping != MAP_FAILED else { return nil }
        bytes = mapping
        self.byteCount = byteCount
    }

    deinit { munmap(bytes, byteCount) }
}
