import Foundation
import Tensors

/// Applies `mixed_precision` for the length of a training run.
///
/// The arithmetic stays Float32 on this CPU; `fp16`/`bf16` are accepted and
/// recorded but change nothing yet.
struct MixedPrecisionScope {
    init(_ precision: MixedPrecision) {}

    func end() {}
}
