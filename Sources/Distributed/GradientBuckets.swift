/// How the gradients of a list of parameters are packed into all-reduce buckets: in the
/// parameters' order, each bucket up to `bucketFloats` floats (a larger parameter is split
/// across buckets), so every rank builds the same buckets from the same parameter list.
public struct GradientBuckets: Equatable, Sendable {
    /// A piece of one parameter inside a bucket.
    public struct Member: Equatable, Sendable {
        /// The parameter's index in the list.
        public let parameter: Int
        /// The first element of the parameter in this piece.
        public let start: Int
        /// Elements in the piece.
        public let count: Int
        /// Where the piece starts in the bucket.
        public let offset: Int
    }

    /// One all-reduce.
    public struct Bucket: Equatable, Sendable {
        public var members: [Member] = []
        public var floatCount = 0
    }

    /// The buckets, in order.
    public let buckets: [Bucket]

    /// All the floats.
    public var floatCount: Int { buckets.reduce(0) { $0 + $1.floatCount } }

    /// Buckets for parameters of `counts` elements; `bucketFloats` ≤ 0 means one bucket.
    public init(counts: [Int], bucketFloats: Int) {
        let capacity = bucketFloats > 0 ? bucketFloats : Int.max
        var buckets: [Bucket] = []
        var current = Bucket()
        for (parameter, count) in counts.enumerated() {
            var start = 0
            while start < count {
                if current.floatCount == capacity {
                    buckets.append(current)
                    current = Bucket()
                }
                let length = Swift.min(count - start, capacity - current.floatCount)
                current.members.append(Member(parameter: parameter, start: start, count: length, offset: current.floatCount))
                current.floatCount += length
                start += length
            }
        }
        if current.floatCount > 0 { buckets.append(current) }
        self.buckets = buckets
    }
}
