import Foundation

/// Gradient checkpointing: PyTorch's `torch.utils.checkpoint` with non-reentrant semantics.
///
/// `checkpoint(inputs, parameters:) { … }` runs its body without recording a graph, so
/// none of the body's activations are kept; the result gets one recorded node that holds
/// only the inputs. When backward reaches that node, the body runs again on the same
/// inputs with recording on, and the gradient goes back through the recomputed sub-graph
/// to the inputs and the parameters (and only then is the sub-graph freed). The gradients
/// are the ones the plain graph gives, up to float rounding where a kernel chooses a
/// different path when it records.
///
/// Non-reentrant: the recomputation's gradients come back as the node's input gradients
/// through the one backward pass (no nested `backward()`, no write to any `grad` from
/// inside), so the parameters get gradients even when no input needs one, and
/// `gradients(of:withRespectTo:)` sees them like any other.
///
/// Random draws: `dropout`, `randn`, `rand` and `randint` inside the body draw through
/// `RandomReplay`, which logs each generator state during the first run and replays it
/// during the recomputation, so the same masks are drawn and the caller's generators
/// advance once.
///
/// The body must reach every tensor that needs a gradient through `inputs` or
/// `parameters`; one it captures otherwise stops the backward pass with a message naming it.
public func checkpoint(_ inputs: [Tensor], parameters: [Tensor], _ body: @escaping ([Tensor]) -> Tensor) -> Tensor {
    let extras = parameters.filter(\.needsGradient)
    guard GradientMode.isEnabled, inputs.contains(where: \.needsGradient) || !extras.isEmpty else { return body(inputs) }
    let saved = inputs.map { $0.detach() }
    let log = RandomReplay.Frame(replaying: nil)
    let output = RandomReplay.with(log) { noGrad { body(saved) } }
    let result = output.detach()
    let edges: [GradientEdge?] = (inputs + extras).map { tensor in
        if let node = tensor.gradientNode { return .node(node) }
        return tensor.requiresGrad ? .leaf(tensor) : nil
    }
    let context = CheckpointBackward(inputs: saved, extras: extras, body: body, randomStates: log.states)
    result.gradientNode = GradientNode(operation: .kernel(context), edges: edges, outputShape: result.shape)
    if !BufferPool.graphRecorded { BufferPool.graphRecorded = true }
    return result
}

/// A checkpointed sub-graph: its inputs, the extra tensors it differentiates (parameters),
/// and what it needs to run again.
struct CheckpointBackward: BackwardContext {
    let inputs: [Tensor]
    let extras: [Tensor]
    let body: ([Tensor]) -> Tensor
    let randomStates: [RandomGenerator]

    var name: String { "checkpoint" }

    func backward(_ gradient: Tensor, inputs needed: [Tensor?]) -> [Tensor?] {
        let leaves = inputs.enumerated().map { index, input -> Tensor in
            let leaf = input.detach()
            leaf.requiresGrad = needed[index] != nil
            return leaf
        }
        let oldest = GradientNode.nextSequence
        let output = RandomReplay.with(RandomReplay.Frame(replaying: randomStates)) {
            GradientMode.recording { body(leaves) }
        }
        var result = [Tensor?](repeating: nil, count: needed.count)
        guard let root = output.gradientNode, root.sequence >= oldest else {
            // The body returned one of its inputs, or something that needs no gradient.
            if let index = leaves.firstIndex(where: { $0 === output }), needed[index] != nil { result[index] = gradient }
            return result
        }
        var storageUses: [ObjectIdentifier: Int] = [ObjectIdentifier(gradient.storage): 2]
        var leafGradients: [ObjectIdentifier: (leaf: Tensor, gradient: Tensor)] = [:]
        var reached = Autograd.propagate(from: root, seed: gradient, retainGraph: false, storageUses: &storageUses,
                                         leafGradients: &leafGradients, oldestSequence: oldest)
        func take(_ leaf: Tensor) -> Tensor? {
            guard let entry = leafGradients.removeValue(forKey: ObjectIdentifier(leaf)) else { return nil }
            return entry.gradient.shape == leaf.shape ? entry.gradient : entry.gradient.reshapedView(leaf.shape)
        }
        for (index, leaf) in leaves.enumerated() where needed[index] != nil { result[index] = take(leaf) }
        for (offset, extra) in extras.enumerated() {
            let index = leaves.count + offset
            if let node = extra.gradientNode {
                let reachedGradient = reached.removeValue(forKey: ObjectIdentifier(node))
                if needed[index] != nil { result[index] = reachedGradient }
            } else {
                let leafGradient = take(extra)
                if needed[index] != nil { result[index] = leafGradient }
            }
        }
        if let entry = leafGradients.first?.value {
            fatalError("checkpoint: the body used a tensor of shape \(entry.leaf.shape) that requires gradients but is neither an input nor in parameters; pass it in one of them")
        }
        if !reached.isEmpty {
            fatalError("checkpoint: the body used a tensor with a recorded graph that is neither an input nor in parameters; pass it as an input")
        }
        return result
    }
}

/// Replays random draws inside a checkpoint's recomputation.
///
/// Every random op of the engine draws through `draw(_:_:)`. Outside a checkpoint it
/// draws from the caller's generator. In a checkpoint's first run, it logs the
/// generator's state before each draw; in the recomputation it draws from the logged
/// state instead and leaves the caller's generator where the first run left it.
/// Frames nest: a checkpoint recorded inside another one's recomputation logs the
/// states the outer one replays.
enum RandomReplay {
    private static let key = "diffuse.random-replay.frames"

    /// One checkpoint run: logging (`replaying == nil`) or replaying.
    final class Frame {
        private(set) var states: [RandomGenerator] = []
        private let replayed: [RandomGenerator]?
        private var position = 0

        init(replaying states: [RandomGenerator]?) {
            replayed = states
        }

        /// The state to draw from, given what the frame below supplies; whether to write the draws back.
        func source(below: () -> (RandomGenerator, Bool)) -> (RandomGenerator, Bool) {
            if let replayed {
                guard position < replayed.count else {
                    fatalError("checkpoint: the recomputation drew more random numbers than the first run (\(replayed.count) draws logged); the body must draw the same way each time")
                }
                position += 1
                return (replayed[position - 1], false)
            }
            let supplied = below()
            states.append(supplied.0)
            return supplied
        }
    }

    private static var frames: [Frame] {
        get { Thread.current.threadDictionary[key] as? [Frame] ?? [] }
        set { Thread.current.threadDictionary[key] = newValue }
    }

    static func with<Result>(_ frame: Frame, _ body: () -> Result) -> Result {
        let outer = frames
        frames = outer + [frame]
        defer { frames = outer }
        return body()
    }

    /// Runs `draws` on `generator`, or on a logged state inside a checkpoint's recomputation.
    static func draw(_ generator: inout RandomGenerator, _ draws: (inout RandomGenerator) -> Void) {
        let stack = frames
        guard !stack.isEmpty else { return draws(&generator) }
        let caller = generator
        func source(_ depth: Int) -> (RandomGenerator, Bool) {
            depth < 0 ? (caller, true) : stack[depth].source { source(depth - 1) }
        }
        let supplied = source(stack.count - 1)
        var state = supplied.0
        draws(&state)
        if supplied.1 { generator = state }
    }
}
