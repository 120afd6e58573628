import Foundation

/// Whether ops record the graph for backward. Thread-local, so a worker
/// thread's kernels never see another thread's scope.
public enum GradientMode {
    private static let key = "diffuse.gradient-mode.disabled-depth"

    /// True unless inside `noGrad { }`.
    public static var isEnabled: Bool {
        (Thread.current.threadDictionary[key] as? Int ?? 0) == 0
    }

    static func adjust(_ delta: Int) {
        let depth = (Thread.current.threadDictionary[key] as? Int ?? 0) + delta
        Thread.current.threadDictionary[key] = depth
    }
}

/// Runs `body` without recording any graph: for inference and for updates.
@discardableResult
public func noGrad<Result>(_ body: () throws -> Result) rethrows -> Result {
    GradientMode.adjust(1)
    defer { GradientMode.adjust(-1) }
    return try body()
}

/// One recorded op: its backward rule (in `Operation`) and the inputs that
/// need gradients (`nil` for those that do not).
final class GradientNode {
    let operation: Operation
    let inputs: [Tensor?]

    init(operation: Operation, inputs: [Tensor?]) {
        self.operation = operation
        self.inputs = inputs
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
    public func backward(_ gradient: Tensor? = nil, retainGraph: Bool = false) {
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
            Autograd.run(root: self, seed: seed, retainGraph: retainGraph)
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
    static func run(root: Tensor, seed: Tensor, retainGraph: Bool) {
        // Topological order by iterative depth-first search (deep graphs must not
        // overflow the stack).
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(root, false)]
        while let (tensor, expanded) = stack.popLast() {
            let id = ObjectIdentifier(tensor)
            if expanded { order.append(tensor); continue }
            if visited.contains(id) { continue }
            visited.insert(id)
            stack.append((tensor, true))
            if let node = tensor.gradientNode {
                for case let input? in node.inputs where !visited.contains(ObjectIdentifier(input)) {
                    stack.append((input, false))
                }
            }
        }

        var pending: [ObjectIdentifier: Tensor] = [ObjectIdentifier(root): seed]
        // How many times each gradient storage was handed out. A leaf adopts its
        // gradient without copying only when nothing else can see that memory
        // (the caller's seed counts as seen).
        var storageUses: [ObjectIdentifier: Int] = [ObjectIdentifier(seed.storage): 2]
        for tensor in order.reversed() {
            let id = ObjectIdentifier(tensor)
            guard let gradient = pending.removeValue(forKey: id) else { continue }
            guard let node = tensor.gradientNode else {
                if tensor.requiresGrad {
                    let shaped = gradient.shape == tensor.shape ? gradient : gradient.reshaped(tensor.shape)
                    if let existing = tensor.grad {
                        tensor.grad = existing + shaped
                    } else if shaped.isContiguous && shaped.dataType == .float32 && storageUses[ObjectIdentifier(shaped.storage)] == 1 {
                        tensor.grad = shaped
                    } else {
                        tensor.grad = shaped.contiguousCopy()
                    }
                }
                continue
            }
            let inputGradients = Gradients.backward(node.operation, gradient: gradient, inputs: node.inputs)
            for (input, inputGradient) in zip(node.inputs, inputGradients) {
                guard let input, let inputGradient else { continue }
                if inputGradient.shape != input.shape {
                    fatalError("autograd: backward of \(node.operation.name) produced a gradient of shape \(inputGradient.shape) for an input of shape \(input.shape)")
                }
                let inputID = ObjectIdentifier(input)
                if let existing = pending[inputID] {
                    let sum = existing + inputGradient
                    storageUses[ObjectIdentifier(sum.storage), default: 0] += 1
                    pending[inputID] = sum
                } else {
                    storageUses[ObjectIdentifier(inputGradient.storage), default: 0] += 1
                    pending[inputID] = inputGradient
                }
            }
            if !retainGraph { tensor.gradientNode = nil }
        }
    }
}
