/// CLIP's byte-pair encoding over integer symbols: the merges of a merges file by rank,
/// applied to one word exactly as transformers' `CLIPTokenizer.bpe` applies them.
///
/// Every string that can occur as a symbol (the 256 byte characters, the same with `</w>`,
/// both halves and the result of every merge) gets an internal symbol number; a merge is
/// looked up by the packed pair `left << 32 | right` in an open-addressing table. The
/// algorithm is the reference one: repeatedly take the adjacent pair of lowest rank and
/// merge all its occurrences left to right, until no adjacent pair is a merge.
struct BPEMerges: Sendable {
    /// One merge: its rank (line order; a repeated pair keeps its last rank, as Python's
    /// `dict(zip(merges, range(...)))` does) and the symbol it produces.
    struct Merge: Sendable {
        var rank: Int32
        var result: Int32
    }

    /// The merge pairs in rank order, as read (kept to save merges.txt back).
    let pairs: [(String, String)]
    /// Symbol string of each internal symbol number.
    private(set) var symbols: [String] = []
    private var symbolNumbers: [String: Int32] = [:]
    /// The symbol of each byte inside a word and at its end (with `</w>`).
    private(set) var byteSymbols = [Int32](repeating: 0, count: 256)
    private(set) var finalByteSymbols = [Int32](repeating: 0, count: 256)
    private var table: PairTable

    /// Builds the merge table from pairs in rank order.
    init(pairs: [(String, String)]) {
        self.pairs = pairs
        table = PairTable(minimumCapacity: pairs.count)
        for byte in 0..<256 {
            let character = String(ByteLevelEncoding.scalarForByte[byte])
            byteSymbols[byte] = intern(character)
            finalByteSymbols[byte] = intern(character + "</w>")
        }
        for (rank, pair) in pairs.enumerated() {
            let left = intern(pair.0), right = intern(pair.1)
            let result = intern(pair.0 + pair.1)
            table.insert(key: Self.key(left, right), merge: Merge(rank: Int32(rank), result: result))
        }
    }

    private mutating func intern(_ symbol: String) -> Int32 {
        if let number = symbolNumbers[symbol] { return number }
        let number = Int32(symbols.count)
        symbols.append(symbol)
        symbolNumbers[symbol] = number
        return number
    }

    @inline(__always) static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    /// The merge of an adjacent pair, if the pair is one.
    @inline(__always) func merge(_ left: Int32, _ right: Int32) -> Merge? {
        table.find(Self.key(left, right))
    }

    /// Merges `word` (symbol numbers; its last one carries `</w>`) in place, lowest rank first.
    func apply(to word: inout [Int32]) {
        var count = word.count
        while count > 1 {
            var best = Int32.max
            var first: Int32 = 0, second: Int32 = 0, result: Int32 = 0
            for index in 0..<(count - 1) {
                if let merge = table.find(Self.key(word[index], word[index + 1])), merge.rank < best {
                    best = merge.rank
                    first = word[index]
                    second = word[index + 1]
                    result = merge.result
                }
            }
            if best == Int32.max { break }
            var read = 0, write = 0
            while read < count {
                if read + 1 < count && word[read] == first && word[read + 1] == second {
                    word[write] = result
                    read += 2
                } else {
                    word[write] = word[read]
                    read += 1
                }
                write += 1
            }
            count = write
        }
        word.removeSubrange(count...)
    }
}

/// An open-addressing hash table from packed symbol pairs to merges (linear probing,
/// Fibonacci hashing; the key `UInt64.max` marks an empty slot, which no pair of
/// non-negative 31-bit symbol numbers can be).
struct PairTable: Sendable {
    private var keys: [UInt64]
    private var merges: [BPEMerges.Merge]
    private let shift: UInt64
    private let mask: Int

    init(minimumCapacity: Int) {
        var capacity = 16
        while capacity < 2 * max(minimumCapacity, 1) { capacity <<= 1 }
        keys = [UInt64](repeating: .max, count: capacity)
        merges = [BPEMerges.Merge](repeating: BPEMerges.Merge(rank: 0, result: 0), count: capacity)
        shift = UInt64(64 - capacity.trailingZeroBitCount)
        mask = capacity - 1
    }

    @inline(__always) private func slot(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// Inserts or replaces (a later line of the same pair replaces the earlier rank).
    mutating func insert(key: UInt64, merge: BPEMerges.Merge) {
        var index = slot(key)
        while keys[index] != .max && keys[index] != key { index = (index + 1) & mask }
        keys[index] = key
        merges[index] = merge
    }

    @inline(__always) func find(_ key: UInt64) -> BPEMerges.Merge? {
        keys.withUnsafeBufferPointer { keys in
            var index = slot(key)
            while true {
                let stored = keys[index]
                if stored == key { return merges[index] }
                if stored == .max { return nil }
                index = (index + 1) & mask
            }
        }
    }
}
