import ArgumentParser
import enum Diffusion.PNG
import struct Diffusion.PixelImage
import Foundation
import NN
import Tensors

/// `diffuse inspect PATH`: what a checkpoint or a diffusers folder holds.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a .safetensors file, a sharded *.safetensors.index.json, a diffusers model or pipeline folder, or a PNG.",
        discussion: """
        For a checkpoint, prints each tensor's name, stored dtype, shape, mean and standard deviation \
        (unbiased, as torch.std), then the tensor count, parameter count and bytes. For a diffusers \
        model folder (config.json + weights) or pipeline folder (model_index.json + sub-folders), prints \
        each component's class, key config entries and parameter count. For a PNG, prints its size and \
        its text chunks: the generation parameters diffuse generate (and other Stable Diffusion tools) \
        store under the key "parameters". Malformed files are reported on stderr with a non-zero exit.
        """)

    @Argument(help: "A .safetensors file, a *.safetensors.index.json, or a folder.")
    var path: String

    @Flag(help: "Skip mean and standard deviation (reads only the headers; fast on multi-GB checkpoints).")
    var noStatistics = false

    func run() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            fail("\(path): no such file or directory")
        }
        var folder: String?
        if isDirectory.boolValue {
            folder = path
        } else if ["model_index.json", "config.json"].contains(URL(fileURLWithPath: path).lastPathComponent) {
            folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        }
        do {
            if let folder, exists(folder, "model_index.json") {
                try inspectPipeline(folder)
            } else if let folder, exists(folder, "config.json") {
                let total = try inspectComponent(name: nil, folder: folder)
                print("total: \(grouped(total)) parameters")
            } else if let bytes = FileManager.default.contents(atPath: path), PNG.hasSignature(bytes) {
                try inspectPNG([UInt8](bytes))
            } else {
                try inspectCheckpoint(try SafetensorsCheckpoint(path: path))
            }
        } catch let error as SafetensorsError {
            fail("\(error)")
        } catch let error as InspectError {
            fail("\(error)")
        }
    }

    /// Prints to stderr and exits with status 1.
    private func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data(("error: " + message + "\n").utf8))
        Inspect.exit(withError: ExitCode.failure)
    }

    private func exists(_ folder: String, _ name: String) -> Bool {
        FileManager.default.fileExists(atPath: URL(fileURLWithPath: folder).appendingPathComponent(name).path)
    }

    // MARK: - PNG images

    /// The picture's size and every text chunk; the `parameters` chunk as its lines.
    private func inspectPNG(_ bytes: [UInt8]) throws {
        let picture: PixelImage
        do { picture = try PNG.decode(bytes, path: path) } catch { throw InspectError(message: "\(error)") }
        print("PNG \(picture.width)×\(picture.height), \(picture.channels == 1 ? "grey" : "RGB")")
        let chunks = PNG.textChunks(bytes)
        if chunks.isEmpty { print("no text chunks (no generation parameters)") }
        for (key, value) in chunks {
            print("\(key):")
            value.split(separator: "\n", omittingEmptySubsequences: false).forEach { print("  " + $0) }
        }
    }

    // MARK: - Checkpoints

    private func inspectCheckpoint(_ checkpoint: SafetensorsCheckpoint) throws {
        let infos = try checkpoint.names.map { try checkpoint.info($0) }
        let nameWidth = Swift.min(60, infos.map(\.name.count).max() ?? 4)
        var header = "name".padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  dtype    shape               "
        if !noStatistics { header += "        mean           std" }
        print(trimmed(header))
        for info in infos {
            var line = info.name.padding(toLength: Swift.max(nameWidth, info.name.count), withPad: " ", startingAt: 0)
                + "  " + info.dataType.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)
                + "  " + "\(info.shape)".padding(toLength: 18, withPad: " ", startingAt: 0)
            if !noStatistics {
                let (mean, deviation) = statistics(try checkpoint.tensor(info.name, as: .float32))
                line += "  " + number(mean) + "  " + number(deviation)
            }
            print(trimmed(line))
        }
        let files = checkpoint.files.count
        print("\(infos.count) tensors, \(grouped(checkpoint.parameterCount)) parameters, \(byteText(checkpoint.tensorBytes))"
              + (files > 1 ? " in \(files) shards" : ""))
        if !checkpoint.metadata.isEmpty {
            print("metadata: " + checkpoint.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", "))
        }
    }

    /// Mean and unbiased standard deviation, accumulated in `Double`.
    private func statistics(_ tensor: Tensor) -> (Double, Double) {
        let count = tensor.count
        guard count > 0 else { return (.nan, .nan) }
        let values = tensor.floatPointer
        var sum = 0.0
        for index in 0..<count { sum += Double(values[index]) }
        let mean = sum / Double(count)
        guard count > 1 else { return (mean, .nan) }
        var squares = 0.0
        for index in 0..<count {
            let difference = Double(values[index]) - mean
            squares += difference * difference
        }
        return (mean, (squares / Double(count - 1)).squareRoot())
    }

    private func number(_ value: Double) -> String {
        value.isNaN ? "          nan" : String(format: "%13.6g", value)
    }

    // MARK: - diffusers folders

    /// The priority config entries shown for a component.
    static let keyEntries = [
        "sample_size", "in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
        "norm_num_groups", "attention_head_dim", "cross_attention_dim", "down_block_types", "up_block_types",
        "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
        "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "projection_dim", "scaling_factor",
    ]

    private func inspectPipeline(_ folder: String) throws {
        let url = URL(fileURLWithPath: folder)
        let index = try readJSON(url.appendingPathComponent("model_index.json").path)
        print("\(index["_class_name"]?.stringValue ?? "pipeline")"
              + (index["_diffusers_version"]?.stringValue.map { " (diffusers \($0))" } ?? "") + " at \(folder)")
        guard case let .object(members) = index else { fail("\(folder)/model_index.json is not a JSON object") }
        var total = 0
        var failed = false
        for (name, value) in members where !name.hasPrefix("_") {
            guard case let .array(parts) = value, parts.count == 2 else { continue }
            let declared = parts.compactMap(\.stringValue).joined(separator: ".")
            let componentFolder = url.appendingPathComponent(name).path
            guard FileManager.default.fileExists(atPath: componentFolder) else {
                print("  \(name): \(declared) (no folder)")
                continue
            }
            do {
                total += try inspectComponent(name: name, folder: componentFolder, declared: declared)
            } catch {
                print("  \(name): \(declared): unreadable (see stderr)")
                FileHandle.standardError.write(Data("error: \(name): \(error)\n".utf8))
                failed = true
            }
        }
        print("total: \(grouped(total)) parameters")
        if failed { Inspect.exit(withError: ExitCode.failure) }
    }

    /// Prints one model folder's class, key config entries and weights; returns its parameter count.
    private func inspectComponent(name: String?, folder: String, declared: String? = nil) throws -> Int {
        let url = URL(fileURLWithPath: folder)
        let configName = ["config.json", "scheduler_config.json", "preprocessor_config.json", "tokenizer_config.json"]
            .first { exists(folder, $0) }
        var line = name.map { "  \($0): " } ?? ""
        var className = declared ?? "model"
        var entries: [String] = []
        if let configName {
            let config = try readJSON(url.appendingPathComponent(configName).path)
            className = config["_class_name"]?.stringValue ?? config["architectures"]?.compactText ?? className
            for key in Self.keyEntries {
                if let value = config[key] { entries.append("\(key)=\(value.stringValue ?? value.compactText)") }
            }
        }
        line += className + (entries.isEmpty ? "" : " — " + entries.joined(separator: ", "))
        print(line)
        guard let weights = try weightsPath(folder) else { return 0 }
        let checkpoint = try SafetensorsCheckpoint(path: weights)
        let dataTypes = Set(try checkpoint.names.map { try checkpoint.info($0).dataType.rawValue }).sorted()
        print((name == nil ? "" : "    ") + "weights: \(URL(fileURLWithPath: weights).lastPathComponent): \(checkpoint.names.count) tensors, "
              + "\(grouped(checkpoint.parameterCount)) parameters (\(dataTypes.joined(separator: ", "))), \(byteText(checkpoint.tensorBytes))")
        return checkpoint.parameterCount
    }

    /// The weights of a model folder: diffusers/transformers names first (full
    /// precision before `fp16` variants), then any single safetensors file or
    /// index; nil for a folder without weights (scheduler, tokenizer).
    private func weightsPath(_ folder: String) throws -> String? {
        for base in ["diffusion_pytorch_model", "model"] {
            for variant in ["", ".fp16"] {
                for suffix in [".safetensors", ".safetensors.index.json"] where exists(folder, base + variant + suffix) {
                    return URL(fileURLWithPath: folder).appendingPathComponent(base + variant + suffix).path
                }
            }
        }
        let contents = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        let hasWeights = contents.contains { $0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.index.json") }
        let hasPickle = contents.contains { [".bin", ".pt", ".pth", ".ckpt"].contains(where: $0.hasSuffix) }
        guard hasWeights || hasPickle else { return nil }
        return folder
    }

    private func readJSON(_ path: String) throws -> JSONValue {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw InspectError(message: "\(path): cannot read: \(error.localizedDescription)")
        }
        do {
            return try JSONValue(parsing: data)
        } catch let error as JSONParseError {
            throw InspectError(message: "\(path): \(error)")
        }
    }

    struct InspectError: Error, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    // MARK: - Formatting

    private func trimmed(_ line: String) -> String {
        String(line.reversed().drop(while: { $0 == " " }).reversed())
    }

    private func grouped(_ value: Int) -> String {
        let digits = Array(String(value))
        var result = ""
        for (index, digit) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { result += "," }
            result.append(digit)
        }
        return result
    }

    private func byteText(_ bytes: Int) -> String {
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(bytes) bytes" : String(format: "%.1f ", value) + units[unit] + " (\(grouped(bytes)) bytes)"
    }
}
