import Foundation
import NN
import Tensors

// Tiled encoding and decoding as diffusers' `AutoencoderKL._tiled_encode` and
// `tiled_decode` do it: tiles of `tileSampleSize` (or `tileLatentSize`) start
// every `(1 − overlap) · size` pixels; each tile's top rows and left columns are
// blended linearly with the (already blended) tile above and to the left, then
// every tile is cropped to `size − blend` and the crops are joined. Written with
// slices, products and concatenations instead of diffusers' in-place writes, so
// the result is differentiable.

extension AutoencoderKL {
    /// The moments of `images`, encoded in overlapping tiles.
    public func tiledEncodeMoments(_ images: Tensor) -> Tensor {
        let stride = Int(Double(tileSampleSize) * (1 - tileOverlapFactor))
        let blend = Int(Double(tileLatentSize) * tileOverlapFactor)
        return Self.tiled(images, tile: tileSampleSize, stride: stride, blend: blend, keep: tileLatentSize - blend, transform: encodeTile)
    }

    /// The images of `latents`, decoded in overlapping tiles.
    public func tiledDecode(_ latents: Tensor) -> Tensor {
        let stride = Int(Double(tileLatentSize) * (1 - tileOverlapFactor))
        let blend = Int(Double(tileSampleSize) * tileOverlapFactor)
        return Self.tiled(latents, tile: tileLatentSize, stride: stride, blend: blend, keep: tileSampleSize - blend, transform: decodeTile)
    }

    /// Runs `transform` on tiles of side `tile` starting every `stride` pixels,
    /// blends `blend` output rows and columns with the neighbours above and to the
    /// left, keeps the first `keep` rows and columns of each and joins them.
    static func tiled(_ input: Tensor, tile: Int, stride: Int, blend: Int, keep: Int, transform: (Tensor) -> Tensor) -> Tensor {
        precondition(stride > 0 && tile > 0 && keep > 0, "AutoencoderKL tiling: tile \(tile), stride \(stride) and kept size \(keep) must be positive")
        let (height, width) = (input.shape[2], input.shape[3])
        var rows: [[Tensor]] = []
        for top in Swift.stride(from: 0, to: height, by: stride) {
            var row: [Tensor] = []
            for left in Swift.stride(from: 0, to: width, by: stride) {
                let piece = input.narrowed(axis: 2, start: top, length: min(tile, height - top))
                    .narrowed(axis: 3, start: left, length: min(tile, width - left))
                row.append(transform(piece))
            }
            rows.append(row)
        }
        var joinedRows: [Tensor] = []
        for i in rows.indices {
            var crops: [Tensor] = []
            for j in rows[i].indices {
                var tile = rows[i][j]
                if i > 0 { tile = blended(rows[i - 1][j], tile, extent: blend, axis: 2) }
                if j > 0 { tile = blended(rows[i][j - 1], tile, extent: blend, axis: 3) }
                rows[i][j] = tile
                crops.append(tile.narrowed(axis: 2, start: 0, length: min(keep, tile.shape[2]))
                    .narrowed(axis: 3, start: 0, length: min(keep, tile.shape[3])))
            }
            joinedRows.append(crops.count == 1 ? crops[0] : Tensor.concatenate(crops, axis: 3))
        }
        return joinedRows.count == 1 ? joinedRows[0] : Tensor.concatenate(joinedRows, axis: 2)
    }

    /// diffusers' `blend_v` (axis 2) and `blend_h` (axis 3): the first `extent`
    /// rows (columns) of `next` become `previous`'s last ones · (1 − y/extent) +
    /// their own · y/extent.
    static func blended(_ previous: Tensor, _ next: Tensor, extent requested: Int, axis: Int) -> Tensor {
        let extent = min(previous.shape[axis], next.shape[axis], requested)
        guard extent > 0 else { return next }
        var weightShape = [1, 1, 1, 1]
        weightShape[axis] = extent
        // diffusers multiplies by Python floats, rounded to float32 by the kernels.
        let incoming = Tensor((0..<extent).map { Float(Double($0) / Double(extent)) }, shape: weightShape)
        let outgoing = Tensor((0..<extent).map { Float(1 - Double($0) / Double(extent)) }, shape: weightShape)
        let tail = previous.narrowed(axis: axis, start: previous.shape[axis] - extent, length: extent)
        let head = next.narrowed(axis: axis, start: 0, length: extent)
        let mixed = tail * outgoing + head * incoming
        guard extent < next.shape[axis] else { return mixed }
        return Tensor.concatenate([mixed, next.narrowed(axis: axis, start: extent, length: next.shape[axis] - extent)], axis: axis)
    }
}
