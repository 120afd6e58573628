import ArgumentParser
import Diffusion
import Foundation
import NN
import Tensors

/// `--prediction-type epsilon|v_prediction|sample` (convert and generate).
extension PredictionType: ExpressibleByArgument {}

/// `diffuse convert INPUT OUTPUT`: a single-file Stable Diffusion checkpoint to a diffusers folder, or back.
struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a single-file Stable Diffusion checkpoint (.safetensors) to a diffusers folder, or a folder to a single file.",
        discussion: """
        A .safetensors INPUT in the original Stable Diffusion layout (model.diffusion_model.*, first_stage_model.*, \
        cond_stage_model.*) becomes a diffusers StableDiffusionPipeline folder at OUTPUT: model_index.json, unet/, \
        vae/, text_encoder/, tokenizer/ and scheduler/ (the sizes, family and prediction type inferred from the \
        tensors, as `diffuse generate FILE.safetensors` does). A folder INPUT becomes a single .safetensors file \
        in the original layout, as diffusers' convert_diffusers_to_original_stable_diffusion.py writes it. \
        Every weight keeps its stored type, so a conversion and its reverse give back the same tensors bit for bit. \
        .ckpt files are refused (they are pickles): the error shows the Python command that converts them.
        """)

    @Argument(help: "A single .safetensors file, or a diffusers pipeline folder.") var input: String
    @Argument(help: "The folder to write (for a file input) or the .safetensors file (for a folder input).") var output: String
    @Option(help: "The prediction type of a single file (epsilon, v_prediction, sample) instead of the inferred one.")
    var predictionType: PredictionType?
    @Option(help: "A tokenizer folder or bpe_simple_vocab_16e6.txt.gz for a single file (default: $DIFFUSE_CLIP_VOCAB or data/clip/).")
    var tokenizer: String?
    @Option(help: ArgumentHelp("A diffusers folder whose config.json files describe a single file's models (as diffusers' from_single_file(config=)), for sizes the tensors cannot tell.", valueName: "folder"))
    var config: String?
    @Option(help: "Store every weight as float32, float16 or bfloat16 (default: as the input stores them).")
    var dtype: String?

    func run() throws {
        do {
            try convert()
        } catch let error as ValidationError {
            throw error
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    private func convert() throws {
        let inputURL = URL(fileURLWithPath: input)
        let outputURL = URL(fileURLWithPath: output)
        let prediction = predictionType
        let types: [String: DataType] = ["float32": .float32, "fp32": .float32, "float16": .float16, "fp16": .float16,
                                         "bfloat16": .bfloat16, "bf16": .bfloat16]
        var dataType: DataType?
        if let dtype {
            guard let value = types[dtype.lowercased()] else { throw ValidationError("--dtype must be float32, float16 or bfloat16") }
            dataType = value
        }
        if StableDiffusionSingleFile.isSingleFile(inputURL) {
            guard !["safetensors", "ckpt"].contains(outputURL.pathExtension.lowercased()) else {
                throw ValidationError("a single file converts to a diffusers folder; OUTPUT names the folder to write")
            }
            let configurationFolder = config.map { URL(fileURLWithPath: $0) }
            let file = try StableDiffusionSingleFile(path: inputURL.path, predictionType: prediction, configurationFolder: configurationFolder)
            print(file.summary)
            let options = SingleFileOptions(predictionType: prediction, tokenizer: tokenizer.map { URL(fileURLWithPath: $0) },
                                            configurationFolder: configurationFolder)
            let pipeline = try StableDiffusionPipeline.load(singleFile: inputURL, options: options, precision: .asStored)
            // One stored type for the folder when the file has one (the text encoder is otherwise written as float32).
            let storedTypes = Set(file.checkpoint.names.compactMap { try? file.checkpoint.info($0).dataType.engineDataType })
            try pipeline.save(folder: outputURL, dataType: dataType ?? (storedTypes.count == 1 ? storedTypes.first : nil))
            print("wrote the diffusers folder \(outputURL.path)")
        } else {
            guard outputURL.pathExtension.lowercased() == "safetensors" else {
                throw ValidationError("a folder converts to a single .safetensors file; OUTPUT must end in .safetensors")
            }
            let pipeline = try StableDiffusionPipeline.load(folder: inputURL, precision: .asStored)
            try pipeline.saveSingleFile(to: outputURL, dataType: dataType)
            let count = try SafetensorsCheckpoint(path: outputURL.path).names.count
            print("wrote \(outputURL.path): \(count) tensors in the original Stable Diffusion layout")
        }
    }
}
