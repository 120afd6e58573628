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
            fatalError("copyValues: destination must be float32, it is \(dataType)"
                       + " (16-bit weights are held read-only: load them as float32, or replaceStorage, to change them)")
        }
        guard isDense else {
            fatalError("copyValues: destination of shape \(shape) with strides \(strides) is not dense")
        }
        Tensor.copyElements(from: source, into: self)
        ComputeMode.weightsChanged()
    }

    /// Replaces a leaf's memory with `storage` (same element count, any data type), keeping
    /// shape and identity, so a parameter can be held in 16 bits (``DataType/bfloat16`` or
    /// ``DataType/float16``, e.g. mapped from a checkpoint) or widened back. The tensor must be
    /// a row-major leaf with no gradient. Ops read 16-bit memory by widening it to float32.
    public func replaceStorage(with storage: Storage) {
        guard isLeaf, isContiguous, offset == 0, grad == nil else {
            fatalError("replaceStorage: only a row-major leaf without gradient can change its memory (shape \(shape), strides \(strides))")
        }
        guard storage.count == count else {
            fatalError("replaceStorage: \(storage.count) elements do not fit shape \(shape)")
        }
        self.storage = storage
        ComputeMode.weightsChanged()
    }

    /// Holds this leaf's values in `dataType` from now on (rounded to nearest even when
    /// narrowing), through ``replaceStorage(with:)``.
    public func convertStorage(to dataType: DataType) {
        guard dataType != self.dataType else { return }
        replaceStorage(with: converted(to: dataType).storage)
    }
}
