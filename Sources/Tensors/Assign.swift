import Foundation

extension Tensor {
    /// Overwrites this tensor's values with `source`'s (same shape; any layout or
    /// storage type), in place and outside the graph. Used to load checkpoints
    /// into existing parameters and by optimizers.
    public func copyValues(from source: Tensor) {
        guard source.shape == shape else {
            fatalError("copyValues: source shape \(source.shape) does not match destination shape \(shape)")
        }
        guard dataType == .float32 else {
            fatalError("copyValues: destination must be float32, it is \(dataType)")
        }
        guard isDense else {
            fatalError("copyValues: destination of shape \(shape) with strides \(strides) is not dense")
        }
        Tensor.copyElements(from: source, into: self)
        ComputeMode.weightsChanged()
    }
}
