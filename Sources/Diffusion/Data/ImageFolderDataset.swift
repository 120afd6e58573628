import Foundation
import Tensors

/// A folder of PNG and JPEG images, searched recursively, decoded lazily from
/// disk each time an example is asked for.
///
/// - Class labels follow torchvision's `ImageFolder`: the class names are the
///   names of the top-level sub-folders that hold images, sorted; an image's
///   label is the index of the top-level sub-folder it is under (at any depth).
///   Images directly in the root folder have no label; a folder without
///   sub-folders has no classes.
/// - Captions follow diffusers' `imagefolder`: a `metadata.jsonl` (in the root or
///   any sub-folder) holds one JSON object per line with a `file_name` (relative
///   to that metadata file's folder) and other columns; the caption is the
///   `captionColumn` (default `text`).
/// - Files are taken by extension (`.png`, `.jpg`, `.jpeg`, any case), ordered by
///   their path relative to the root (byte order), and decoded by content.
///   Hidden files and folders (name starting with `.`) are skipped.
public final class ImageFolderDataset: Dataset {
    /// The root folder.
    public let directory: String
    /// Image paths relative to `directory`, in example order.
    public let relativePaths: [String]
    /// The label of each image, if it is under a class folder.
    public let labels: [Int?]
    /// The caption of each image, if `metadata.jsonl` gives one.
    public let captions: [String?]
    public let classNames: [String]
    /// The other `metadata.jsonl` columns of each image (string values as text,
    /// other values as JSON), empty when it has none.
    public let metadata: [[String: String]]

    public var count: Int { relativePaths.count }

    /// Scans `directory`.
    /// - Parameter captionColumn: the `metadata.jsonl` column used as the caption.
    /// - Throws: `DatasetError.empty` when there is no image, `.invalidMetadata`
    ///   for a malformed `metadata.jsonl` line.
    public init(directory: String, captionColumn: String = "text") throws {
        let root = URL(fileURLWithPath: directory).standardizedFileURL
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DatasetError.unreadable(path: directory, reason: "not a folder")
        }
        let scan = try ImageFolderDataset.scan(root: root.path)
        guard !scan.images.isEmpty else { throw DatasetError.empty(path: directory) }
        let images = scan.images.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }

        let classFolders = Set(images.compactMap { path -> String? in
            let components = path.split(separator: "/", omittingEmptySubsequences: true)
            return components.count > 1 ? String(components[0]) : nil
        })
        let classNames = classFolders.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        let classIndex = Dictionary(uniqueKeysWithValues: classNames.enumerated().map { ($1, $0) })

        var rows: [String: [String: String]] = [:]
        for metadataPath in scan.metadataFiles.sorted() {
            for (file, row) in try ImageFolderMetadata.read(root: root.path, relativePath: metadataPath) {
                rows[file] = row
            }
        }

        self.directory = root.path
        self.relativePaths = images
        self.classNames = classNames
        self.labels = images.map { path in
            let components = path.split(separator: "/", omittingEmptySubsequences: true)
            return components.count > 1 ? classIndex[String(components[0])] : nil
        }
        self.captions = images.map { path in rows[path]?[captionColumn] }
        self.metadata = images.map { path in (rows[path] ?? [:]).filter { $0.key != "file_name" } }
    }

    /// The absolute path of example `index`.
    public func path(of index: Int) -> String {
        (directory as NSString).appendingPathComponent(relativePaths[index])
    }

    public func source(of index: Int) -> String { path(of: index) }

    public func example(at index: Int) throws -> DatasetExample {
        precondition(index >= 0 && index < count, "ImageFolderDataset: index \(index) out of 0..<\(count)")
        let image = try ImageFile.read(path(of: index))
        return DatasetExample(image: image.tensor(), label: labels[index], caption: captions[index])
    }

    /// Image files and `metadata.jsonl` files under `root`, as paths relative to
    /// it; hidden files and everything in hidden folders are left out.
    static func scan(root: String) throws -> (images: [String], metadataFiles: [String]) {
        guard let enumerator = FileManager.default.enumerator(atPath: root) else {
            throw DatasetError.unreadable(path: root, reason: "cannot list the folder")
        }
        var images: [String] = []
        var metadataFiles: [String] = []
        while let relative = enumerator.nextObject() as? String {
            let components = relative.split(separator: "/")
            if components.contains(where: { $0.hasPrefix(".") }) { continue }
            var isDirectory: ObjCBool = false
            let absolute = (root as NSString).appendingPathComponent(relative)
            guard FileManager.default.fileExists(atPath: absolute, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            let name = (relative as NSString).lastPathComponent
            if name == "metadata.jsonl" {
                metadataFiles.append(relative)
            } else if ImageFile.extensions.contains((name as NSString).pathExtension.lowercased()) {
                images.append(relative)
            }
        }
        return (images, metadataFiles)
    }
}

/// Reading diffusers' `metadata.jsonl`.
enum ImageFolderMetadata {
    /// The rows of the metadata file at `relativePath` (under `root`), keyed by
    /// the image path relative to `root`; each row's columns as text.
    static func read(root: String, relativePath: String) throws -> [(String, [String: String])] {
        let path = (root as NSString).appendingPathComponent(relativePath)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DatasetError.unreadable(path: path, reason: "cannot read the metadata file")
        }
        let folder = (relativePath as NSString).deletingLastPathComponent
        var rows: [(String, [String: String])] = []
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        for (number, line) in lines.enumerated() {
            let text = line.trimmingCharacters(in: .whitespacesAndNewlines)
            if text.isEmpty { continue }
            let value: JSONValue
            do {
                value = try JSONText.parse(text)
            } catch {
                throw DatasetError.invalidMetadata(path: path, line: number + 1, reason: "not valid JSON (\(error))")
            }
            guard case let .object(row) = value else {
                throw DatasetError.invalidMetadata(path: path, line: number + 1, reason: "not a JSON object")
            }
            guard case let .string(fileName)? = row["file_name"], !fileName.isEmpty else {
                throw DatasetError.invalidMetadata(path: path, line: number + 1, reason: "no \"file_name\" string")
            }
            let joined = folder.isEmpty ? fileName : (folder as NSString).appendingPathComponent(fileName)
            rows.append((normalize(joined), row.compactMapValues(ImageFolderMetadata.text)))
        }
        return rows
    }

    /// A column's value as text: strings as they are, null as nil, anything else
    /// as compact JSON (Python's `json.dumps`, keys sorted).
    static func text(_ value: JSONValue) -> String? {
        switch value {
        case .null: return nil
        case let .string(string): return string
        default: return JSONText.write(value, indent: nil)
        }
    }

    /// A relative path without `.` components or repeated slashes.
    static func normalize(_ path: String) -> String {
        path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }.joined(separator: "/")
    }
}
