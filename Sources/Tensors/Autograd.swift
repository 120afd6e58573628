import Foundation

/// Whether ops record the graph for backward. Thread-local, so a worker
/// thread's kernels never see another thread's scope.
public enum GradientMode {
    /// How many `noGrad { }` scopes this thread is inside.
    private static let disabledDepth = ThreadLocalCount()

    /// True unless inside `noGrad { }`.
    public static var isEnabled: Bool {
        disabledDepth.value == 0
    }

    static func adjust(_ delta: Int) {
        disabledDepth.value += delta
    }

    /// Runs `body` with recording on, even inside `noGrad { }` or a backward pass
    /// (a checkpoint's recomputation records its sub-graph there).
    static func recording<Result>(_ body: () throws -> Result) rethrows -> Result {
        let depth = disabledDepth.value
        disabledDepth.value = 0
        defer { disabledDepth.value = depth }
        return try body()
    }
}

/// Runs `body` without recording any graph: for inference and for updates.
@discardableResult
public func noGrad<Result>(_ body: () throws -> Result) rethrows -> Result {
    GradientMode.adjust(1)
    defer { GradientMode.adjust(-1) }
    return try body()
}

/// Where a gradient flows from a recorded op: into the op that produced that
/// input, or into a leaf tensor's `grad`.
///
/// Edges point at nodes, not at intermediate tensors, so the graph keeps an
/// activation alive only when some backward rule saved it.
enum GradientEdge {
    case node(GradientNode)
    case leaf(Tensor)
}

/// One recorded op: its backward rule (in `Operation`) and an edge for every
/// input (`nil` where the input needs no gradient).
final class GradientNode {
    var operation: Operation
    var edges: [GradientEdge?]
    let outputShape: [Int]
    /// Set when a backward pass freed this node's saved tensors.
    var isReleased = false
    /// Order of creation: a checkpoint's recomputed sub-graph stops at nodes older than itself.
    let sequence: Int
    nonisolated(unsafe) private static var created = 0
    /// The sequence number the next node will take.
    static var nextSequence: Int { created }

    init(operation: Operation, edges: [GradientEdge?], outputShape: [Int]) {
        self.operation = operation
        self.edges = edges
        self.outputShape = outputShape
        sequence = GradientNode.created
        GradientNode.created += 1
        if OperationProfile.isEnabled { OperationProfile.recordForward(operation.name, shape: outputShape) }
    }

    /// Drops the saved tensors and edges.
    func release() {
        operation = .identity
        edges = []
        isReleased = true
    }
}

extension Tensor {
    /// Computes the gradient of this tensor with respect to every leaf that
    /// requires gradients, adding it into the leaf's `grad`.
    ///
    /// - Parameters:
    ///   - gradient: d loss / d self; defaults to 1 for a one-element tensor.
    ///   - retainGraph: keep the graph for another backward pass. By default the
    ///     graph (and every activation it saved) is freed.
    ///   - gradientReady: called once for every leaf the graph reaches, as soon as no
    ///     recorded op can add to its gradient any more, with the leaf's `grad` already
    ///     final (also when nothing flowed into it). A data-parallel trainer starts the
    ///     all-reduce of a bucket of gradients from here while the rest of the backward
    ///     pass runs. Without it the gradients are written at the end of the pass (the
    ///     same values).
    public func backward(_ gradient: Tensor? = nil, retainGraph: Bool = false, gradientReady: ((Tensor) -> Void)? = nil) {
        guard needsGradient else {
            fatalError("backward: tensor of shape \(shape) does not require gradients (no input had requiresGrad = true)")
        }
        let seed: Tensor
        if let gradient {
            guard gradient.shape == shape else {
                fatalError("backward: gradient shape \(gradient.shape) does not match tensor shape \(shape)")
            }
            seed = gradient
        } else {
            guard count == 1 else {
                fatalError("backward: a gradient must be given for a tensor of shape \(shape) (only one-element tensors default to 1)")
            }
            seed = Tensor.ones(shape)
        }
        noGrad {
            Autograd.run(root: self, seed: seed, retainGraph: retainGraph, gradientReady: gradientReady)
        }
    }
}

/// Computes d `output` / d `inputs` without touching any `.grad`: the
/// functional form guidance uses for d loss / d x.
public func gradients(of output: Tensor, withRespectTo inputs: [Tensor], retainGraph: Bool = false) -> [Tensor] {
    guard output.count == 1 else { fatalError("gradients(of:): output must have one element, it has shape \(output.shape)") }
    let saved = inputs.map { $0.grad }
    inputs.forEach { $0.grad = nil }
    output.backward(retainGraph: retainGraph)
    let result = inputs.map { $0.grad ?? Tensor.zeros($0.shape) }
    for (input, old) in zip(inputs, saved) { input.grad = old }
    return result
}

enum Autograd {
    /// A stand-in passed to backward rules for "this input needs a gradient".
    static let needed = Tensor.zeros([0])

    static func run(root: Tensor, seed: Tensor, retainGraph: Bool, gradientReady: ((Tensor) -> Void)? = nil) {
        var leafGradients: [ObjectIdentifier: (leaf: Tensor, gradient: Tensor)] = [:]
        // How many times each gradient storage was handed out. A leaf adopts its
        // gradient without copying only when nothing else can see that memory
        // (the caller's seed counts as seen).
        var storageUses: [ObjectIdentifier: Int] = [ObjectIdentifier(seed.storage): 2]

        if let rootNode = root.gradientNode {
            if let gradientReady {
                var readiness: LeafReadiness? = LeafReadiness(gradientReady)
                propagate(from: rootNode, seed: seed, retainGraph: retainGraph, storageUses: &storageUses,
                          leafGradients: &leafGradients, oldestSequence: 0, readiness: &readiness)
            } else {
                propagate(from: rootNode, seed: seed, retainGraph: retainGraph, storageUses: &storageUses, leafGradients: &leafGradients)
            }
            if !retainGraph { root.gradientNode = nil }
        } else if root.requiresGrad {
            leafGradients[ObjectIdentifier(root)] = (root, seed)
        }

        for (_, entry) in leafGradients {
            accumulate(entry.gradient, into: entry.leaf, storageUses: storageUses)
            gradientReady?(entry.leaf)
        }
    }

    /// Adds `gradient` into `leaf.grad` (adopting its memory when nothing else can see it).
    static func accumulate(_ gradient: Tensor, into leaf: Tensor, storageUses: [ObjectIdentifier: Int]) {
        let shaped = gradient.shape == leaf.shape ? gradient : gradient.reshapedView(leaf.shape)
        if let existing = leaf.grad {
            leaf.grad = existing + shaped
        } else if shaped.isContiguous && shaped.dataType == .float32 && storageUses[ObjectIdentifier(shaped.storage)] == 1 {
            leaf.grad = shaped
        } else {
            leaf.grad = shaped.contiguousCopy()
        }
    }

    /// For a backward pass with a gradient-ready hook: how many recorded ops that have not
    /// run yet still point at each leaf. A leaf whose count reaches zero is final.
    struct LeafReadiness {
        let gradientReady: (Tensor) -> Void
        var remaining: [ObjectIdentifier: Int] = [:]
        init(_ gradientReady: @escaping (Tensor) -> Void) { self.gradientReady = gradientReady }

        /// Counts the leaf edges of the nodes about to run.
        mutating func count(_ order: [GradientNode]) {
            for node in order {
                for case let .leaf(tensor)? in node.edges { remaining[ObjectIdentifier(tensor), default: 0] += 1 }
            }
        }

        /// A node with these edges ran or was skipped: its leaves that no other node points at are written and reported.
        mutating func finished(_ edges: [GradientEdge?], storageUses: [ObjectIdentifier: Int],
                               leafGradients: inout [ObjectIdentifier: (leaf: Tensor, gradient: Tensor)]) {
            for case let .leaf(tensor)? in edges {
                let id = ObjectIdentifier(tensor)
                guard let count = remaining[id] else { continue }
                if count > 1 { remaining[id] = count - 1; continue }
                remaining[id] = nil
                if let entry = leafGradients.removeValue(forKey: id) {
                    Autograd.accumulate(entry.gradient, into: tensor, storageUses: storageUses)
                }
                gradientReady(tensor)
            }
        }
    }

    /// Runs the backward rules from `rootNode` down, collecting leaf gradients in `leafGradients`.
    /// Nodes older than `oldestSequence` are not entered (a checkpoint's recomputed sub-graph
    /// stops there); the gradients that reached them are returned.
    @discardableResult
    static func propagate(from rootNode: GradientNode, seed: Tensor, retainGraph: Bool,
                          storageUses: inout [ObjectIdentifier: Int],
                          leafGradients: inout [ObjectIdentifier: (leaf: Tensor, gradient: Tensor)],
                          oldestSequence: Int = 0) -> [ObjectIdentifier: Tensor] {
        var noHook: LeafReadiness?
        return propagate(from: rootNode, seed: seed, retainGraph: retainGraph, storageUses: &storageUses,
                         leafGradients: &leafGradients, oldestSequence: oldestSequence, readiness: &noHook)
    }

    /// The backward pass; with `readiness`, each leaf's gradient is written and reported as soon as it is final.
    static func propagate(from rootNode: GradientNode, seed: Tensor, retainGraph: Bool,
                          storageUses: inout [ObjectIdentifier: Int],
                          leafGradients: inout [ObjectIdentifier: (leaf: Tensor, gradient: Tensor)],
                          oldestSequence: Int, readiness: inout LeafReadiness?) -> [ObjectIdentifier: Tensor] {
        // Topological order of the nodes by iterative depth-first search (deep
        // graphs must not overflow the stack).
        var order: [GradientNode] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(GradientNode, Bool)] = [(rootNode, false)]
        while let (node, expanded) = stack.popLast() {
            if expanded { order.append(node); continue }
            guard visited.insert(ObjectIdentifier(node)).inserted else { continue }
            stack.append((node, true))
            for case let .node(input)? in node.edges where !visited.contains(ObjectIdentifier(input)) && input.sequence >= oldestSequence {
                stack.append((input, false))
            }
        }

        readiness?.count(order)
        var pending: [ObjectIdentifier: Tensor] = [ObjectIdentifier(rootNode): seed]
        for node in order.reversed() {
            // With a hook, a node that is skipped or has run releases its leaves (nothing without one).
            let edges = readiness == nil ? nil : node.edges
            defer { if let edges { readiness?.finished(edges, storageUses: storageUses, leafGradients: &leafGradients) } }
            guard let gradient = pending.removeValue(forKey: ObjectIdentifier(node)) else { continue }
            if node.isReleased {
                fatalError("backward: this graph was already freed by an earlier backward(); pass retainGraph: true to the first call to run backward twice")
            }
            let markers = node.edges.map { $0 == nil ? nil : Autograd.needed }
            let operation = node.operation.mappingSavedActivations(SavedTensorPrecision.decompress)
            let started = OperationProfile.isEnabled ? OperationProfile.now() : 0
            let inputGradients = Gradients.backward(operation, gradient: gradient, inputs: markers)
            if OperationProfile.isEnabled { OperationProfile.recordBackward(node.operation.name, shape: node.outputShape, nanoseconds: OperationProfile.now() - started) }
            // Count every hand-out first, so a tensor given to two inputs is never adopted by one.
            for (edge, inputGradient) in zip(node.edges, inputGradients) where edge != nil {
                if let inputGradient { storageUses[ObjectIdentifier(inputGradient.storage), default: 0] += 1 }
            }
            for (edge, inputGradient) in zip(node.edges, inputGradients) {
                guard let edge, let inputGradient else { continue }
                switch edge {
                case .node(let input):
                    if inputGradient.shape != input.outputShape {
                        fatalError("autograd: backward of \(node.operation.name) produced a gradient of shape \(inputGradient.shape) for an input of shape \(input.outputShape)")
                    }
                    let inputID = ObjectIdentifier(input)
                    if let existing = pending[inputID] {
                        let sum = existing + inputGradient
                        storageUses[ObjectIdentifier(sum.storage), default: 0] += 1
                        pending[inputID] = sum
                    } else {
                        pending[inputID] = inputGradient
                    }
                case .leaf(let tensor):
                    if inputGradient.count != tensor.count {
                        fatalError("autograd: backward of \(node.operation.name) produced a gradient of shape \(inputGradient.shape) for an input of shape \(tensor.shape)")
                    }
                    let id = ObjectIdentifier(tensor)
                    if let existing = leafGradients[id] {
                        let sum = existing.gradient + inputGradient
                        storageUses[ObjectIdentifier(sum.storage), default: 0] += 1
                        leafGradients[id] = (tensor, sum)
                    } else {
                        leafGradients[id] = (tensor, inputGradient)
                    }
                }
            }
            if !retainGraph { node.release() }
        }
        return pending
    }
}
