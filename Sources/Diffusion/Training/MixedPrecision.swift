import Foundation
import Tensors

/// Applies `mixed_precision` for the length of a training run: the arithmetic
/// stays float32 on this CPU, and `fp16`/`bf16` store the activations saved
/// for backward as float16/bfloat16 (``SavedTensorPrecision``), which roughly
/// halves the memory a training step's graph holds.
struct MixedPrecisionScope {
    private let previous: DataType

    init(_ precision: MixedPrecision) {
        previous = SavedTensorPrecision.dataType
        SavedTensorPrecision.dataType = precision.savedActivationType
    }

    func end() { SavedTensorPrecision.dataType = previous }
}

extension MixedPrecision {
    /// The storage type of activations saved for backward.
    public var savedActivationType: DataType {
        switch self {
        case .no: return .float32
        case .fp16: return .float16
        case .bf16: return .bfloat16
        }
    }
}
