import Foundation

/// Errors reading datasets and image files. Every case that concerns one file
/// names it, so a warning or a failure tells the user which file to look at.
public enum DatasetError: Error, CustomStringConvertible {
    /// The file could not be opened or read.
    case unreadable(path: String, reason: String)
    /// The file was read but its contents are not what they should be (a broken
    /// IDX file, a corrupt or truncated image, an unknown image format).
    case malformed(path: String, reason: String)
    /// A dataset asked for by name is not on this machine; `hint` says how to get it.
    case notInstalled(name: String, hint: String)
    /// A `metadata.jsonl` line that is not a JSON object with a `file_name`.
    case invalidMetadata(path: String, line: Int, reason: String)
    /// A folder with no image the dataset can read.
    case empty(path: String)
    /// Examples of one batch that do not have the same shape.
    case inconsistentShapes(first: [Int], other: [Int], path: String?)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "cannot read \(path): \(reason)"
        case let .malformed(path, reason): return "\(path) is malformed: \(reason)"
        case let .notInstalled(name, hint): return "dataset \(name) is not installed: \(hint)"
        case let .invalidMetadata(path, line, reason): return "\(path) line \(line): \(reason)"
        case let .empty(path): return "no PNG or JPEG images under \(path)"
        case let .inconsistentShapes(first, other, path):
            let origin = path.map { " (\($0))" } ?? ""
            return "examples of one batch differ in shape: \(first) and \(other)\(origin); "
                + "add Resize/CenterCrop and ConvertChannels transforms so every example has the same shape"
        }
    }
}
