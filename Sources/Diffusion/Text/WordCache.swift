/// A cache from a word's UTF-8 bytes to its token ids, the role of the `cache` dict of
/// transformers' `CLIPTokenizer.bpe`: words and ids live in two flat arenas and an
/// open-addressing table of entry numbers finds them without allocating a key per look-up.
///
/// The cache is bounded: when it holds `entryLimit` words it is emptied and starts again
/// (a prompt stream with unbounded vocabulary cannot grow memory without limit).
/// Not thread-safe by itself; `CLIPTokenizer` guards it with a lock.
struct WordCache {
    private struct Entry {
        var hash: UInt64
        var keyStart: Int32
        var keyLength: Int32
        var valueStart: Int32
        var valueCount: Int32
    }

    private var keyBytes: [UInt8] = []
    private var values: [Int32] = []
    private var entries: [Entry] = []
    /// Entry number + 1 per slot; 0 is empty.
    private var slots: [Int32] = []
    private var mask = 0
    let entryLimit: Int

    init(entryLimit: Int = 1 << 18) {
        self.entryLimit = entryLimit
        reset(capacity: 1024)
    }

    /// The number of cached words.
    var count: Int { entries.count }

    private mutating func reset(capacity: Int) {
        slots = [Int32](repeating: 0, count: capacity)
        mask = capacity - 1
    }

    /// FNV-1a over the bytes, finished with a multiply so that the high bits mix.
    @inline(__always) static func hash(_ word: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in word { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        return hash &* 0x9E37_79B9_7F4A_7C15
    }

    /// Appends the cached ids of `word` to `output` and returns true, or returns false.
    @inline(__always) func appendIDs(of word: UnsafeBufferPointer<UInt8>, hash: UInt64, to output: inout [Int32]) -> Bool {
        var index = Int(truncatingIfNeeded: hash >> 40) & mask
        while true {
            let stored = slots[index]
            if stored == 0 { return false }
            let entry = entries[Int(stored) - 1]
            if entry.hash == hash && Int(entry.keyLength) == word.count && keyMatches(entry, word) {
                let start = Int(entry.valueStart)
                for offset in 0..<Int(entry.valueCount) { output.append(values[start + offset]) }
                return true
            }
            index = (index + 1) & mask
        }
    }

    @inline(__always) private func keyMatches(_ entry: Entry, _ word: UnsafeBufferPointer<UInt8>) -> Bool {
        keyBytes.withUnsafeBufferPointer { stored in
            let start = Int(entry.keyStart)
            for offset in 0..<word.count where stored[start + offset] != word[offset] { return false }
            return true
        }
    }

    /// Remembers the ids of `word` (which must not be cached yet).
    mutating func insert(_ word: UnsafeBufferPointer<UInt8>, hash: UInt64, ids: ArraySlice<Int32>) {
        if entries.count >= entryLimit {
            keyBytes.removeAll(keepingCapacity: true)
            values.removeAll(keepingCapacity: true)
            entries.removeAll(keepingCapacity: true)
            reset(capacity: 1024)
        }
        if (entries.count + 1) * 2 > slots.count { grow() }
        let entry = Entry(hash: hash, keyStart: Int32(keyBytes.count), keyLength: Int32(word.count),
                          valueStart: Int32(values.count), valueCount: Int32(ids.count))
        keyBytes.append(contentsOf: word)
        values.append(contentsOf: ids)
        entries.append(entry)
        place(entryNumber: Int32(entries.count), hash: hash)
    }

    private mutating func place(entryNumber: Int32, hash: UInt64) {
        var index = Int(truncatingIfNeeded: hash >> 40) & mask
        while slots[index] != 0 { index = (index + 1) & mask }
        slots[index] = entryNumber
    }

    private mutating func grow() {
        reset(capacity: slots.count * 2)
        for (number, entry) in entries.enumerated() { place(entryNumber: Int32(number + 1), hash: entry.hash) }
    }
}
