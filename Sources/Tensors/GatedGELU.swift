import Foundation

extension Tensor {
    /// `hidden · gelu(gate)` with the exact GELU, in one pass: the activation of diffusers' `GEGLU`
    /// (Stable Diffusion's feed-forward). The composite `hidden * gate.gelu()` is its reference
    /// (`gatedGELUReference`): the same float operations in the same order, so values and d hidden
    /// agree bit for bit, d gate too except where the composite's GELU backward takes its scalar
    /// reference for a range's last few elements (within the vector derivative's 1.4e-7). One pass instead of two, and the backward pass keeps `hidden` and `gate` only
    /// (the composite also keeps `gelu(gate)`) and gives both gradients in one pass that evaluates
    /// Φ and φ once per element. Operands that are not float32 of one shape take the composite.
    public static func gatedGELU(hidden: Tensor, gate: Tensor) -> Tensor {
        guard hidden.shape == gate.shape, hidden.dataType == .float32, gate.dataType == .float32 else {
            return gatedGELUReference(hidden: hidden, gate: gate)
        }
        let hiddenData = hidden.contiguousData(), gateData = gate.contiguousData()
        let result = Tensor(uninitializedShape: hidden.shape)
        let h = UnsafePointer(hiddenData.floatPointer), g = UnsafePointer(gateData.floatPointer), out = result.floatPointer
        Parallel.forEach(result.count, grain: 8192) { range in
            VectorMath.gatedGELU(h + range.lowerBound, g + range.lowerBound, out + range.lowerBound, range.count)
        }
        return Tensor.record(result, .kernel(GatedGELUBackward(hidden: gate.needsGradient ? hiddenData.detach() : nil,
                                                              gate: gateData.detach())),
                             inputs: [hidden, gate])
    }

    /// `gatedGELU` of the two halves of the last dimension of `halves` (`[…, 2·n]` → `[…, n]`: the
    /// first n the hidden values, the last n the gate), as diffusers' `GEGLU` chunks its projection.
    /// The projection stays one product (one weight-gradient and one input-gradient product in
    /// backward, no sum of two input gradients), and its gradient comes back as one `[…, 2·n]`
    /// tensor, written row by row with the halves side by side. Not float32: the halves as views
    /// through `gatedGELU(hidden:gate:)`.
    public static func gatedGELU(halves: Tensor) -> Tensor {
        guard let width = halves.shape.last, width % 2 == 0 else {
            fatalError("gatedGELU(halves:): the last dimension of \(halves.shape) is not two equal halves")
        }
        guard width > 0, halves.count > 0, halves.dataType == .float32 else {
            let parts = halves.chunked(2, axis: -1)
            return gatedGELU(hidden: parts[0], gate: parts[1])
        }
        let half = width / 2, rows = halves.count / width
        let data = halves.contiguousData()
        let result = Tensor(uninitializedShape: Array(halves.shape.dropLast()) + [half])
        // Recorded, Φ(gate) is kept for the backward pass, which then needs only the density's exponential.
        let recording = GradientMode.isEnabled && halves.needsGradient
        let distribution = recording ? Tensor(uninitializedShape: result.shape) : nil
        let source = UnsafePointer(data.floatPointer), out = result.floatPointer, kept = distribution?.floatPointer
        Parallel.forEach(rows, grain: Swift.max(1, 8192 / half)) { range in
            for row in range {
                VectorMath.gatedGELU(source + row * width, source + row * width + half, out + row * half, half,
                                     distribution: kept.map { $0 + row * half })
            }
        }
        guard let distribution else { return result }
        return Tensor.record(result, .kernel(GatedGELUHalvesBackward(halves: data.detach(), distribution: distribution)), inputs: [halves])
    }

    /// The composite `gatedGELU` is tested against.
    public static func gatedGELUReference(hidden: Tensor, gate: Tensor) -> Tensor {
        hidden * gate.gelu()
    }
}

/// What `gatedGELU` keeps for its backward pass: d hidden = dY · gelu(g), d gate = (dY · h) · gelu′(g).
struct GatedGELUBackward: BackwardContext {
    /// The contiguous `hidden`, kept when the gate needs a gradient.
    let hidden: Tensor?
    /// The contiguous gate.
    let gate: Tensor

    var name: String { "gatedGELU" }

    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext {
        GatedGELUBackward(hidden: hidden.map(transform), gate: transform(gate))
    }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let upstream = gradient.contiguousData()
        let gateData = gate.contiguousData(), hiddenData = hidden?.contiguousData()
        let hiddenGradient = inputs[0] != nil ? Tensor(uninitializedShape: gate.shape) : nil
        let gateGradient = inputs[1] != nil && hiddenData != nil ? Tensor(uninitializedShape: gate.shape) : nil
        let dy = UnsafePointer(upstream.floatPointer), g = UnsafePointer(gateData.floatPointer)
        let h = hiddenData.map { UnsafePointer($0.floatPointer) }
        let dh = hiddenGradient?.floatPointer, dg = gateGradient?.floatPointer
        Parallel.forEach(gate.count, grain: 8192) { range in
            let offset = range.lowerBound
            VectorMath.gatedGELUBackward(dy + offset, g + offset, h.map { $0 + offset }, dh.map { $0 + offset },
                                         dg.map { $0 + offset }, range.count)
        }
        return [hiddenGradient, gateGradient]
    }
}

/// What `gatedGELU(halves:)` keeps for its backward pass: the projection `[…, 2·n]`, whose gradient
/// it returns with d hidden and d gate side by side in each row, and Φ of the gate `[…, n]`.
struct GatedGELUHalvesBackward: BackwardContext {
    let halves: Tensor
    let distribution: Tensor

    var name: String { "gatedGELU" }

    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext {
        GatedGELUHalvesBackward(halves: transform(halves), distribution: transform(distribution))
    }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        guard inputs[0] != nil else { return [nil] }
        let upstream = gradient.contiguousData(), data = halves.contiguousData(), kept = distribution.contiguousData()
        let width = data.shape[data.rank - 1], half = width / 2, rows = data.count / width
        let result = Tensor(uninitializedShape: data.shape)
        let dy = UnsafePointer(upstream.floatPointer), source = UnsafePointer(data.floatPointer), target = result.floatPointer
        let phi = UnsafePointer(kept.floatPointer)
        Parallel.forEach(rows, grain: Swift.max(1, 8192 / half)) { range in
            for row in range {
                let h = source + row * width, d = target + row * width
                VectorMath.gatedGELUBackward(dy + row * half, h + half, h, d, d + half, half, distribution: phi + row * half)
            }
        }
        return [result]
    }
}

extension VectorMath {
    /// out = h · gelu(g) over `count` floats; Φ(g) into `distribution` when given (gelu(g) = g · Φ(g) either way).
    static func gatedGELU(_ h: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ count: Int,
                          distribution: UnsafeMutablePointer<Float>? = nil) {
        var index = 0
        while index + 8 <= count {
            let gate = UnsafeRawPointer(g + index).loadUnaligned(as: Vector.self)
            let hidden = UnsafeRawPointer(h + index).loadUnaligned(as: Vector.self)
            let phi = normalDistribution(gate)
            UnsafeMutableRawPointer(out + index).storeBytes(of: hidden * (gate * phi), as: Vector.self)
            if let distribution { UnsafeMutableRawPointer(distribution + index).storeBytes(of: phi, as: Vector.self) }
            index += 8
        }
        if index < count {
            var gate = Vector(repeating: 0), hidden = Vector(repeating: 0)
            for lane in 0..<(count - index) { gate[lane] = g[index + lane]; hidden[lane] = h[index + lane] }
            let phi = normalDistribution(gate)
            let value = hidden * (gate * phi)
            for lane in 0..<(count - index) { out[index + lane] = value[lane]; distribution?[index + lane] = phi[lane] }
        }
    }

    /// dh = dy · gelu(g) and dg = (dy · h) · gelu′(g) over `count` floats (either output may be absent;
    /// `h` is read only for `dg`). Φ(g) and φ(g) are evaluated once for both.
    /// `distribution`: Φ(g) as the forward pass kept it, else computed here.
    static func gatedGELUBackward(_ dy: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ h: UnsafePointer<Float>?,
                                  _ dh: UnsafeMutablePointer<Float>?, _ dg: UnsafeMutablePointer<Float>?, _ count: Int,
                                  distribution: UnsafePointer<Float>? = nil) {
        @inline(__always) func step(_ upstream: Vector, _ gate: Vector, _ hidden: Vector, _ phi: Vector?) -> (Vector, Vector) {
            let gelu = phi.map { geluExactAndDerivative(gate, distribution: $0) } ?? geluExactAndDerivative(gate)
            return (upstream * gelu.value, (upstream * hidden) * gelu.derivative)
        }
        var index = 0
        while index + 8 <= count {
            let upstream = UnsafeRawPointer(dy + index).loadUnaligned(as: Vector.self)
            let gate = UnsafeRawPointer(g + index).loadUnaligned(as: Vector.self)
            let hidden = h.map { UnsafeRawPointer($0 + index).loadUnaligned(as: Vector.self) } ?? Vector(repeating: 0)
            let phi = distribution.map { UnsafeRawPointer($0 + index).loadUnaligned(as: Vector.self) }
            let (hiddenGradient, gateGradient) = step(upstream, gate, hidden, phi)
            if let dh { UnsafeMutableRawPointer(dh + index).storeBytes(of: hiddenGradient, as: Vector.self) }
            if let dg { UnsafeMutableRawPointer(dg + index).storeBytes(of: gateGradient, as: Vector.self) }
            index += 8
        }
        if index < count {
            var upstream = Vector(repeating: 0), gate = Vector(repeating: 0), hidden = Vector(repeating: 0), phi = Vector(repeating: 0)
            for lane in 0..<(count - index) {
                upstream[lane] = dy[index + lane]; gate[lane] = g[index + lane]; hidden[lane] = h?[index + lane] ?? 0
                phi[lane] = distribution?[index + lane] ?? 0
            }
            let (hiddenGradient, gateGradient) = step(upstream, gate, hidden, distribution == nil ? nil : phi)
            for lane in 0..<(count - index) {
                dh?[index + lane] = hiddenGradient[lane]
                dg?[index + lane] = gateGradient[lane]
            }
        }
    }
}
