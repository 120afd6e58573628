import Foundation
import Tensors

/// The base class of layers and models.
///
/// A module's parameters are its stored `Tensor` properties; its children are
/// its stored `Module` properties and arrays of modules (named `0`, `1`, … like
/// PyTorch's `ModuleList`). Both are found by reflection and named by property
/// name, or through `stateDictKeys` where PyTorch's name differs, so
/// `namedParameters()` yields exactly the keys of a PyTorch state dict
/// (`down_blocks.0.resnets.1.conv1.weight`).
open class Module {
    /// Training mode (dropout active) or evaluation mode.
    public private(set) var isTraining = true

    public init() {}

    /// Swift property name → state-dict name, for members whose PyTorch name is
    /// not a good Swift name (`["toQuery": "to_q"]`). Unlisted members keep
    /// their property name.
    open class var stateDictKeys: [String: String] { [:] }

    /// The direct parameters and children, in declaration order.
    private func members() -> [(name: String, value: Any)] {
        var result: [(String, Any)] = []
        var mirror: Mirror? = Mirror(reflecting: self)
        var levels: [[(String, Any)]] = []
        let keys = Self.stateDictKeys
        while let current = mirror {
            var level: [(String, Any)] = []
            for child in current.children {
                guard let label = child.label else { continue }
                level.append((keys[label] ?? label, child.value))
            }
            levels.append(level)
            mirror = current.superclassMirror
        }
        // Superclass properties first, as they are declared first.
        for level in levels.reversed() { result.append(contentsOf: level) }
        return result
    }

    /// Parameters declared directly on this module.
    public func ownParameters() -> [(name: String, tensor: Tensor)] {
        members().compactMap { member in
            if let tensor = member.value as? Tensor { return (member.name, tensor) }
            if let optional = member.value as? Tensor?, let tensor = optional { return (member.name, tensor) }
            return nil
        }
    }

    /// Direct children, arrays flattened to `name.index`.
    open func children() -> [(name: String, module: Module)] {
        var result: [(String, Module)] = []
        for member in members() {
            if let module = member.value as? Module {
                result.append((member.name, module))
            } else if let optional = member.value as? Module?, let module = optional {
                result.append((member.name, module))
            } else if let list = member.value as? [Module] {
                for (index, module) in list.enumerated() { result.append(("\(member.name).\(index)", module)) }
            }
        }
        return result
    }

    /// Every module in the tree with its dotted path ("" for self).
    public func namedModules(prefix: String = "") -> [(name: String, module: Module)] {
        var result: [(String, Module)] = [(prefix, self)]
        for (name, child) in children() {
            result.append(contentsOf: child.namedModules(prefix: prefix.isEmpty ? name : "\(prefix).\(name)"))
        }
        return result
    }

    /// Every parameter with its state-dict name, in declaration order.
    public func namedParameters() -> [(name: String, tensor: Tensor)] {
        var result: [(String, Tensor)] = []
        var seen = Set<ObjectIdentifier>()
        for (path, module) in namedModules() {
            for (name, tensor) in module.ownParameters() where !seen.contains(ObjectIdentifier(tensor)) {
                seen.insert(ObjectIdentifier(tensor))
                result.append((path.isEmpty ? name : "\(path).\(name)", tensor))
            }
        }
        return result
    }

    /// All parameters.
    public func parameters() -> [Tensor] { namedParameters().map(\.tensor) }

    /// Parameters that will be trained (`requiresGrad` set).
    public func trainableParameters() -> [Tensor] { parameters().filter(\.requiresGrad) }

    /// Number of scalar parameters.
    public var parameterCount: Int { parameters().reduce(0) { $0 + $1.count } }

    /// Switches this module and all children to training or evaluation mode.
    public func train(_ training: Bool = true) {
        for (_, module) in namedModules() { module.isTraining = training }
    }

    /// Evaluation mode (dropout off).
    public func eval() { train(false) }

    /// Stops gradients for parameters whose name matches `pattern` (all when nil).
    /// Returns how many were frozen.
    @discardableResult
    public func freeze(matching pattern: String? = nil) -> Int {
        setRequiresGrad(false, matching: pattern)
    }

    /// Re-enables gradients for parameters whose name matches `pattern` (all when nil).
    @discardableResult
    public func unfreeze(matching pattern: String? = nil) -> Int {
        setRequiresGrad(true, matching: pattern)
    }

    private func setRequiresGrad(_ value: Bool, matching pattern: String?) -> Int {
        let matcher = pattern.map(NamePattern.init)
        var changed = 0
        for (name, tensor) in namedParameters() where matcher?.matches(name) ?? true {
            tensor.requiresGrad = value
            changed += 1
        }
        return changed
    }

    /// Clears every parameter's gradient.
    public func zeroGradients() {
        for parameter in parameters() { parameter.grad = nil }
    }
}

/// A parameter-name pattern: a glob (`*` any run of characters, `?` one) or,
/// written as `/…/`, a regular expression; either must match the whole name.
public struct NamePattern {
    private let expression: NSRegularExpression

    public init(_ pattern: String) {
        let source: String
        if pattern.count >= 2 && pattern.hasPrefix("/") && pattern.hasSuffix("/") {
            source = "^(?:" + pattern.dropFirst().dropLast() + ")$"
        } else {
            var escaped = ""
            for character in pattern {
                switch character {
                case "*": escaped += ".*"
                case "?": escaped += "."
                default: escaped += NSRegularExpression.escapedPattern(for: String(character))
                }
            }
            source = "^" + escaped + "$"
        }
        guard let compiled = try? NSRegularExpression(pattern: source) else {
            fatalError("NamePattern: invalid pattern \(pattern)")
        }
        expression = compiled
    }

    public func matches(_ name: String) -> Bool {
        expression.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) != nil
    }
}
