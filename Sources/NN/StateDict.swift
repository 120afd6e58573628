import Foundation
import Tensors

/// What did not fit when loading a state dict into a module.
public struct StateDictReport: Error, CustomStringConvertible, Equatable {
    /// Parameters of the module that the state dict does not have.
    public var missing: [String] = []
    /// Entries of the state dict that the module does not have.
    public var unexpected: [String] = []
    /// Entries whose shape differs from the parameter's: name, expected, found.
    public var mismatched: [ShapeMismatch] = []

    public struct ShapeMismatch: Equatable, Sendable {
        public let name: String
        public let expected: [Int]
        public let found: [Int]

        public init(name: String, expected: [Int], found: [Int]) {
            self.name = name
            self.expected = expected
            self.found = found
        }
    }

    /// An empty report; fill it as entries fail to match.
    public init(missing: [String] = [], unexpected: [String] = [], mismatched: [ShapeMismatch] = []) {
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
    }

    /// True when everything matched.
    public var isClean: Bool { missing.isEmpty && unexpected.isEmpty && mismatched.isEmpty }

    public var description: String {
        var lines: [String] = ["the state dict does not match the model:"]
        if !missing.isEmpty { lines.append("  missing (\(missing.count)): " + missing.joined(separator: ", ")) }
        if !unexpected.isEmpty { lines.append("  unexpected (\(unexpected.count)): " + unexpected.joined(separator: ", ")) }
        for mismatch in mismatched {
            lines.append("  shape mismatch: \(mismatch.name) expects \(mismatch.expected), found \(mismatch.found)")
        }
        return lines.joined(separator: "\n")
    }
}

extension Module {
    /// Parameters by state-dict name (the tensors themselves, not copies).
    public func stateDict() -> [String: Tensor] {
        Dictionary(namedParameters().map { ($0.name, $0.tensor) }, uniquingKeysWith: { first, _ in first })
    }

    /// Copies values from `stateDict` into the parameters, converting half precision.
    ///
    /// - Parameter strict: when true (the default) any missing or unexpected key or
    ///   any shape mismatch throws a `StateDictReport` listing all of them, and no
    ///   parameter is changed. When false, matching entries are loaded and the
    ///   report of the rest is returned.
    @discardableResult
    public func load(stateDict: [String: Tensor], strict: Bool = true) throws -> StateDictReport {
        var report = StateDictReport()
        let parameters = namedParameters()
        let known = Set(parameters.map(\.name))
        for (name, parameter) in parameters {
            guard let source = stateDict[name] else { report.missing.append(name); continue }
            if source.shape != parameter.shape {
                report.mismatched.append(.init(name: name, expected: parameter.shape, found: source.shape))
            }
        }
        report.unexpected = stateDict.keys.filter { !known.contains($0) }.sorted()
        if strict && !report.isClean { throw report }
        let mismatchedNames = Set(report.mismatched.map(\.name))
        for (name, parameter) in parameters where !mismatchedNames.contains(name) {
            if let source = stateDict[name] { parameter.copyValues(from: source) }
        }
        return report
    }
}
