import Foundation
import Tensors

/// Tiles a batch `[N, C, H, W]` of images in [-1, 1] into one image, row by row,
/// `columns` per row, with `padding` pixels of `paddingValue` (in [-1, 1]; -1 is
/// black) between images and around the edge, as torchvision's `make_grid`.
/// Values are clamped to [-1, 1] and mapped to 0…255. One or three channels
/// (or four, kept as RGBA); two-channel images are not supported.
public func makeGrid(images: Tensor, columns: Int = 8, padding: Int = 2, paddingValue: Float = -1) -> PixelImage {
    precondition(images.rank == 4, "makeGrid: expected [N, C, H, W], got shape \(images.shape)")
    let (count, channels, height, width) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3])
    precondition([1, 3, 4].contains(channels), "makeGrid: images must have 1, 3 or 4 channels, got \(channels)")
    precondition(columns > 0 && padding >= 0, "makeGrid: columns must be positive and padding non-negative")
    let gridColumns = Swift.max(1, Swift.min(columns, count))
    let gridRows = Swift.max(1, (count + gridColumns - 1) / gridColumns)
    let gridWidth = gridColumns * (width + padding) + padding
    let gridHeight = gridRows * (height + padding) + padding
    let background = PixelImage.quantize(paddingValue)
    var samples = [UInt8](repeating: background, count: gridWidth * gridHeight * channels)
    let values = images.toArray()
    let plane = height * width
    for index in 0..<count {
        let top = padding + (index / gridColumns) * (height + padding)
        let left = padding + (index % gridColumns) * (width + padding)
        let base = index * channels * plane
        for row in 0..<height {
            for column in 0..<width {
                let target = ((top + row) * gridWidth + left + column) * channels
                for channel in 0..<channels {
                    samples[target + channel] = PixelImage.quantize(values[base + channel * plane + row * width + column])
                }
            }
        }
    }
    return PixelImage(width: gridWidth, height: gridHeight, channels: channels, samples: samples)
}

/// Saves an image tensor in [-1, 1] as an 8-bit PNG, atomically (temporary file,
/// then rename). Takes `[C, H, W]`, `[1, C, H, W]` or `[H, W]` with 1 (grey) or 3
/// (RGB) channels, or a batch `[N, C, H, W]`, which is tiled with `makeGrid`.
public func savePNG(_ tensor: Tensor, path: String, columns: Int = 8, padding: Int = 2) throws {
    let image: PixelImage
    if tensor.rank == 4 && tensor.shape[0] > 1 {
        image = makeGrid(images: tensor, columns: columns, padding: padding)
    } else {
        image = PixelImage(tensor: tensor)
    }
    try PNG.write(image, to: path)
}
