import AnvilCore
import Foundation

/// An elementwise activation fused into a preceding layer, as oneDNN applies
/// post-ops: the layer's output, plus bias and residual sum, then the activation.
public enum Activation: Sendable, Equatable {
    case relu
    case clip(min: Float, max: Float)
    case leakyRelu(alpha: Float)
    case sigmoid
    case tanh
    case hardSigmoid(alpha: Float, beta: Float)
    case hardSwish
    case elu(alpha: Float)
    case mish
    case gelu
    case geluTanh
    case silu
    /// x · sigmoid(α · x) for α ≠ 1 (SiLU is α = 1): CLIP's quick GELU is α = 1.702.
    case swish(alpha: Float)

    /// Parses the attribute form: a name and up to two parameters.
    public init?(name: String, alpha: Float?, beta: Float?) {
        switch name {
        case "Relu": self = .relu
        case "Clip": self = .clip(min: alpha ?? -.greatestFiniteMagnitude, max: beta ?? .greatestFiniteMagnitude)
        case "LeakyRelu": self = .leakyRelu(alpha: alpha ?? 0.01)
        case "Sigmoid": self = .sigmoid
        case "Tanh": self = .tanh
        case "HardSigmoid": self = .hardSigmoid(alpha: alpha ?? 0.2, beta: beta ?? 0.5)
        case "HardSwish": self = .hardSwish
        case "Elu": self = .elu(alpha: alpha ?? 1)
        case "Mish": self = .mish
        case "Gelu": self = .gelu
        case "GeluTanh": self = .geluTanh
        case "SiLU", "Swish": self = (alpha ?? 1) == 1 ? .silu : .swish(alpha: alpha!)
        default: return nil
        }
    }

    /// The attribute form: name, alpha, beta.
    public var attributes: (name: String, alpha: Float?, beta: Float?) {
        switch self {
        case .relu: ("Relu", nil, nil)
        case .clip(let lo, let hi): ("Clip", lo, hi)
        case .leakyRelu(let a): ("LeakyRelu", a, nil)
        case .sigmoid: ("Sigmoid", nil, nil)
        case .tanh: ("Tanh", nil, nil)
        case .hardSigmoid(let a, let b): ("HardSigmoid", a, b)
        case .hardSwish: ("HardSwish", nil, nil)
        case .elu(let a): ("Elu", a, nil)
        case .mish: ("Mish", nil, nil)
        case .gelu: ("Gelu", nil, nil)
        case .geluTanh: ("GeluTanh", nil, nil)
        case .silu: ("SiLU", nil, nil)
        case .swish(let a): ("Swish", a, nil)
        }
    }

    /// f(0) == 0: a channel that is all zero stays all zero through the activation.
    public var preservesZero: Bool {
        switch self {
        case .sigmoid, .hardSigmoid: false
        case .clip(let lo, let hi): lo <= 0 && hi >= 0
        default: true
        }
    }

    /// The function on one value.
    public func callAsFunction(_ x: Double) -> Double {
        switch self {
        case .relu: return x.isNaN ? x : max(x, 0)
        case .clip(let lo, let hi): return x.isNaN ? x : min(max(x, Double(lo)), Double(hi))
        case .leakyRelu(let a): return x < 0 ? x * Double(a) : x
        case .sigmoid: return x >= 0 ? 1 / (1 + Foundation.exp(-x)) : Foundation.exp(x) / (1 + Foundation.exp(x))
        case .tanh: return Foundation.tanh(x)
        case .hardSigmoid(let a, let b): return x.isNaN ? x : max(0, min(1, Double(a) * x + Double(b)))
        case .hardSwish: return x * max(0, min(1, x / 6 + 0.5))
        case .elu(let a): return x < 0 ? Double(a) * (Foundation.exp(x) - 1) : x
        case .mish: return x * Foundation.tanh(x > 30 ? x : Foundation.log1p(Foundation.exp(x)))
        case .gelu: return 0.5 * x * (1 + Foundation.erf(x / 2.0.squareRoot()))
        case .geluTanh: return 0.5 * x * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
        case .silu: return x >= 0 ? x / (1 + Foundation.exp(-x)) : x * Foundation.exp(x) / (1 + Foundation.exp(x))
        case .swish(let a):
            let z = Double(a) * x
            return z >= 0 ? x / (1 + Foundation.exp(-z)) : x * Foundation.exp(z) / (1 + Foundation.exp(z))
        }
    }

    /// Applies the activation to every element.
    public func apply(_ t: Tensor) throws -> Tensor { try t.mapFloating { self($0) } }
}
