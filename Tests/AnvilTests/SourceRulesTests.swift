import AnvilKernels
import Foundation
import XCTest

/// Rules of the code base that a reviewer would otherwise check by hand: files stay
/// small, decisions never travel as strings, and the runtime side never imports the
/// builder side.
final class SourceRulesTests: XCTestCase {
    /// Every hand-written Swift source file under Sources (generated C aside).
    func sources() throws -> [(path: String, text: String)] {
        let root = TestSupport.root + "/Sources"
        let files = try XCTUnwrap(FileManager.default.enumerator(atPath: root)).compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
        return try files.sorted().map { ("Sources/" + $0, try String(contentsOfFile: root + "/" + $0, encoding: .utf8)) }
    }

    func testNoSourceFileIsOver600Lines() throws {
        let files = try sources()
        XCTAssertGreaterThan(files.count, 50)
        for (path, text) in files {
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).count - (text.hasSuffix("\n") ? 1 : 0)
            XCTAssertLessThanOrEqual(lines, 600, "\(path) has \(lines) lines: split it by idea (STYLE.md)")
        }
    }

    /// Kernel kinds, algorithms, layouts and precisions are typed codes: no string form
    /// exists to parse, and no code looks for the old tactic strings.
    func testDecisionsAreNeverParsedFromStrings() throws {
        // The raw values are bytes, so `Layout(rawValue: "nhwc")` cannot even compile.
        XCTAssertTrue(Layout.RawValue.self == UInt8.self && Precision.RawValue.self == UInt8.self
                      && KernelKind.RawValue.self == UInt8.self && Algorithm.RawValue.self == UInt8.self)
        let forbidden = ["\"onednn", "tactic.hasPrefix", "tactic.split", "tactic: String", "ActivationLayout", "ChannelLayout", "layoutClass(",
                         "Layout(rawValue: String", "$0.contains(\"avx"]
        // A layer's tactic as a property (the old string) exists no more.
        let layerTactic = try NSRegularExpression(pattern: #"\b(layer|l|layers\[[^\]]*\])\.tactic\b"#)
        for (path, text) in try sources() {
            for pattern in forbidden {
                XCTAssertFalse(text.contains(pattern), "\(path) contains \(pattern)")
            }
            XCTAssertNil(layerTactic.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)), "\(path) reads a layer's tactic")
        }
    }

    /// The runtime side (AnvilCore, AnvilKernels, AnvilEngine, AnvilRuntime) imports no
    /// builder module, and the importer does not link the kernels (nor oneDNN).
    func testDependencyRule() throws {
        let builder = ["AnvilIR", "AnvilOps", "AnvilONNX", "AnvilPasses", "AnvilBuilder"]
        for (path, text) in try sources() {
            let imports = text.split(separator: "\n").filter { $0.hasPrefix("import ") }.map { String($0.dropFirst(7)) }
            let module = path.split(separator: "/")[1]
            if ["AnvilCore", "AnvilKernels", "AnvilEngine", "AnvilRuntime"].contains(String(module)) {
                for m in builder { XCTAssertFalse(imports.contains(m), "\(path) (runtime side) imports \(m)") }
            }
            if module == "AnvilONNX" {
                for m in ["AnvilKernels", "AnvilOps", "COneDNN"] { XCTAssertFalse(imports.contains(m), "\(path) imports \(m): the importer would link oneDNN") }
            }
        }
    }
}
