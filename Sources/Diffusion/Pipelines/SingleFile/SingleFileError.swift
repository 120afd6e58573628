import Foundation

/// A single-file checkpoint Diffuse cannot read, named before any weight is loaded.
public enum SingleFileError: Error, CustomStringConvertible, Equatable {
    /// A PyTorch pickle (`.ckpt`, `.pt`, `.bin`): never unpickled; the message gives the conversion command.
    case pickleCheckpoint(path: String)
    /// A file whose parts Diffuse recognises but some of which are missing (named in `parts`).
    case missingParts(path: String, parts: [String])
    /// The tensor names are not the original Stable Diffusion layout (or a variant Diffuse does not run).
    case unknownLayout(path: String, reason: String)
    /// The tensors do not fit together (a shape that contradicts another).
    case inconsistent(path: String, reason: String)

    public var description: String {
        switch self {
        case .pickleCheckpoint(let path):
            let base = (path as NSString).deletingPathExtension
            return """
                \(path) is a PyTorch pickle checkpoint; Diffuse reads only .safetensors (a pickle can run code when loaded). \
                Convert it once with Python, to a single .safetensors file:
                  python -c "import torch, safetensors.torch as s; d = torch.load('\(path)', map_location='cpu', weights_only=True); \
                d = d.get('state_dict', d); s.save_file({k: v.contiguous() for k, v in d.items() if isinstance(v, torch.Tensor)}, '\(base).safetensors')"
                or to a diffusers folder:
                  python -c "from diffusers import StableDiffusionPipeline as P; P.from_single_file('\(path)').save_pretrained('\(base)')"
                (torch refuses some training checkpoints with weights_only=True; use False only for a file you trust)
                """
        case .missingParts(let path, let parts):
            return "\(path) is a Stable Diffusion single file without " + parts.joined(separator: ", ")
                + "; Diffuse needs the UNet, the VAE and the text encoder in one file (or use a diffusers folder)"
        case .unknownLayout(let path, let reason):
            return "\(path): unknown layout: \(reason)"
        case .inconsistent(let path, let reason):
            return "\(path): \(reason)"
        }
    }
}
