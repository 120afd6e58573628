import ArgumentParser
import Diffusion
import Foundation
import NN
import Tensors

/// `diffuse measure`: the guidance benchmark's measures on saved samples.
struct Measure: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure saved samples (from `diffuse sample --save-tensor`): class accuracy and colour distance.",
        discussion: """
        --judge DIR --expect K: the fraction of samples a clean-image classifier (diffuse train-classifier \
        --clean) assigns to class K (or to the classes of a list, one per sample, repeated in turn). \
        --color #RRGGBB: the mean absolute distance of the samples' pixels to the colour, in [0, 1] units. \
        Prints one `key=value` line.
        """)

    @Argument(help: "A safetensors file with tensor \"samples\" [N, C, H, W] in [-1, 1].") var samples: String
    @Option(help: ArgumentHelp("A clean-image classifier folder.", valueName: "dir")) var judge: String?
    @Option(help: ArgumentHelp("The requested class(es): 3, 0-9, or names.", valueName: "k")) var expect: String?
    @Option(help: ArgumentHelp("A target colour.", valueName: "#RRGGBB")) var color: String?
    @Option(help: ArgumentHelp("The object's expected colour in tinted images (estimated per sample: the pixels far from the border's colour).",
                               valueName: "#RRGGBB")) var foregroundColor: String?
    @Option(help: ArgumentHelp("The expected background colour in tinted images (the border's median colour).", valueName: "#RRGGBB"))
    var backgroundColor: String?

    func run() throws {
        try CommandFailure.report {
            let tensors = try Safetensors.load(path: samples, as: .float32)
            guard let images = tensors["samples"] ?? (tensors.count == 1 ? tensors.values.first : nil), images.rank == 4 else {
                throw ValidationError("\(samples) has no [N, C, H, W] tensor \"samples\"")
            }
            var fields = ["count=\(images.shape[0])"]
            if let judge {
                guard let expect else { throw ValidationError("--judge needs --expect: the requested class") }
                let classifier = try NoiseAwareClassifier.load(folder: URL(fileURLWithPath: judge))
                var labels = try SampleRun.parseClasses(expect, names: classifier.configuration.classNames)
                let count = images.shape[0]
                if labels.count != count, count % labels.count == 0 {
                    labels = labels.flatMap { Array(repeating: $0, count: count / labels.count) }
                }
                guard labels.count == count else { throw ValidationError("\(labels.count) expected classes for \(count) samples") }
                let predicted = classifier.predict(noGrad { images.clamped(min: -1, max: 1) }, timestep: 0)
                let correct = zip(predicted, labels).filter { $0 == $1 }.count
                fields.append(String(format: "class_accuracy=%.4f", Double(correct) / Double(count)))
                var histogram = [Int](repeating: 0, count: classifier.configuration.classCount)
                for label in predicted { histogram[label] += 1 }
                fields.append("predicted=" + histogram.map(String.init).joined(separator: ","))
            }
            if let color {
                let loss = try ColorLoss(hex: color)
                fields.append(String(format: "color_distance=%.4f", loss.meanDistance(images)))
            }
            if foregroundColor != nil || backgroundColor != nil {
                guard images.shape[1] == 3 else { throw ValidationError("--foreground-color and --background-color need RGB samples") }
                let estimates = TintEstimation.colors(of: images)
                for (name, hex, pick) in [("foreground", foregroundColor, 0), ("background", backgroundColor, 1)] {
                    guard let hex else { continue }
                    let target = try ColorLoss(hex: hex)
                    let rgb = [target.red, target.green, target.blue]
                    let distances = estimates.map { TintEstimation.distance(pick == 0 ? $0.foreground : $0.background, rgb) }
                    fields.append(String(format: "%@_distance=%.4f", name, distances.reduce(0, +) / Float(distances.count)))
                    // The share of samples whose estimated colour is within 0.15 (mean per channel) of the target.
                    fields.append(String(format: "%@_match=%.4f", name, Float(distances.filter { $0 < 0.15 }.count) / Float(distances.count)))
                }
            }
            print(fields.joined(separator: " "))
        }
    }
}
