import Foundation

/// What a recorded graph keeps alive for backward, by op: a diagnostic for
/// training memory ("which layers hold the activations?").
public enum GraphMemory {
    /// One op kind's share of the saved memory.
    public struct Entry: Sendable {
        public let operation: String
        public let nodes: Int
        /// Bytes of storages first reached through this op kind.
        public let bytes: Int
    }

    /// Walks the graph behind `root` and attributes every distinct storage held by a
    /// node (its saved tensors and leaf inputs) to the first op that holds it. Sorted by bytes.
    public static func report(for root: Tensor) -> [Entry] {
        var seenNodes = Set<ObjectIdentifier>()
        var seenStorages = Set<ObjectIdentifier>()
        var totals: [String: (nodes: Int, bytes: Int)] = [:]
        var stack: [GradientNode] = root.gradientNode.map { [$0] } ?? []
        while let node = stack.popLast() {
            guard seenNodes.insert(ObjectIdentifier(node)).inserted else { continue }
            var held: [Tensor] = []
            collectTensors(in: node.operation, into: &held)
            for case let .leaf(tensor)? in node.edges { held.append(tensor) }
            var bytes = 0
            for saved in held where seenStorages.insert(ObjectIdentifier(saved.storage)).inserted {
                bytes += saved.storage.count * saved.storage.dataType.byteSize
            }
            let name = node.operation.name
            totals[name, default: (0, 0)].nodes += 1
            totals[name, default: (0, 0)].bytes += bytes
            for case let .node(input)? in node.edges { stack.append(input) }
        }
        return totals.map { Entry(operation: $0.key, nodes: $0.value.nodes, bytes: $0.value.bytes) }.sorted { $0.bytes > $1.bytes }
    }

    private static func collectTensors(in value: Any, into result: inout [Tensor], depth: Int = 0) {
        guard depth < 6 else { return }
        for child in Mirror(reflecting: value).children {
            if let tensor = child.value as? Tensor {
                result.append(tensor)
            } else if let optional = child.value as? Tensor? {
                if let tensor = optional { result.append(tensor) }
            } else if !(child.value is Int || child.value is Float || child.value is [Int] || child.value is String || child.value is Bool) {
                collectTensors(in: child.value, into: &result, depth: depth + 1)
            }
        }
    }
}
