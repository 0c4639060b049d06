import AnvilCore
import Foundation
import XCTest

/// ONNX backend node tests through the reference executor. The committed
/// manifest lists every case expected to pass; a listed case that does not pass
/// fails the test. `ANVIL_RECORD_MANIFEST=1` rewrites the manifest from this run.
/// The run also writes docs/conformance.md.
final class NodeConformanceTests: XCTestCase {
    static let defaultRtol = 1e-3
    static let defaultAtol = 1e-5

    func testNodeCasesMatchManifest() throws {
        let root = ConformanceRunner.root
        let dataDir = "\(root)/conformance-data/node"
        guard FileManager.default.fileExists(atPath: dataDir) else {
            XCTFail("\(dataDir) is missing: run tools/make-conformance-data (tools/test does)")
            return
        }
        let manifestPath = "\(root)/Tests/ConformanceTests/manifest.txt"
        let expected = Set((try? String(contentsOfFile: manifestPath, encoding: .utf8))?
            .split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") && !$0.isEmpty } ?? [])
        let cases = try FileManager.default.contentsOfDirectory(atPath: dataDir).sorted()
        XCTAssertEqual(cases.count, 1884, "onnx 1.23.2 has 1,884 node cases")
        let runner = ConformanceRunner()
        var results: [(name: String, op: String, status: CaseStatus)] = []
        for name in cases {
            let folder = "\(dataDir)/\(name)"
            let meta = ConformanceRunner.meta(folder)
            let status: CaseStatus
            if let why = meta.unstorable {
                status = .unsupported(why)
            } else {
                status = runner.run(folder: folder, rtol: max(meta.rtol ?? Self.defaultRtol, Self.defaultRtol),
                                    atol: max(meta.atol ?? Self.defaultAtol, Self.defaultAtol))
            }
            results.append((name, meta.op ?? "?", status))
        }
        let passed = Set(results.filter { $0.status == .passed }.map(\.name))
        let regressions = expected.subtracting(passed).sorted()
        for name in regressions {
            let status = results.first { $0.name == name }?.status
            XCTFail("\(name) is in the manifest but did not pass: \(String(describing: status))")
        }
        let newlyPassing = passed.subtracting(expected)
        if ProcessInfo.processInfo.environment["ANVIL_RECORD_MANIFEST"] == "1" {
            let text = "# ONNX node conformance cases expected to pass (onnx 1.23.2), one per line.\n# Re-record: ANVIL_RECORD_MANIFEST=1 tools/test\n" + passed.sorted().joined(separator: "\n") + "\n"
            try text.write(toFile: manifestPath, atomically: true, encoding: .utf8)
        } else if !newlyPassing.isEmpty {
            print("conformance: \(newlyPassing.count) cases pass that the manifest does not list; re-record with ANVIL_RECORD_MANIFEST=1")
        }
        try Self.writeReport(results, to: "\(root)/docs/conformance.md")
        let failures = results.filter { $0.status != .passed }.map { "\($0.name) [\($0.status.label)]: \(Self.reason($0.status))" }
        try failures.joined(separator: "\n").write(toFile: "\(root)/.build/conformance-failures.txt", atomically: true, encoding: .utf8)
        print("conformance: \(passed.count) passed, \(results.count - passed.count) not passed of \(results.count)")
    }

    static func reason(_ s: CaseStatus) -> String {
        switch s {
        case .passed: ""
        case .failed(let r), .unsupported(let r): r
        }
    }

    static func writeReport(_ results: [(name: String, op: String, status: CaseStatus)], to path: String) throws {
        var byOp: [String: (pass: Int, fail: Int, unsupported: Int)] = [:]
        for r in results {
            var e = byOp[r.op] ?? (0, 0, 0)
            switch r.status {
            case .passed: e.pass += 1
            case .failed: e.fail += 1
            case .unsupported: e.unsupported += 1
            }
            byOp[r.op] = e
        }
        let total = byOp.values.reduce((0, 0, 0)) { ($0.0 + $1.pass, $0.1 + $1.fail, $0.2 + $1.unsupported) }
        var md = """
        # ONNX conformance

        The ONNX backend node test cases of onnx 1.23.2 (1,884 cases, materialized by
        `tools/make-conformance-data`), run through Anvil's reference executor by
        `tools/test` (test `NodeConformanceTests`), compared with rtol 1e-3 and atol 1e-5
        (or the case's own looser tolerance). Outputs of the 16-bit float types are
        compared at their own precision, about two units in the last place (rtol 1.6e-2
        for bfloat16, 2e-3 for float16): the ONNX reference rounds to the type after every
        step, Anvil computes in higher precision and rounds once. This file is written by
        that test run.

        | | passed | failed | unsupported |
        |---|---:|---:|---:|
        | **total** | **\(total.0)** | **\(total.1)** | **\(total.2)** |

        "Unsupported" means the case uses an op or a value kind (sequences, optionals,
        string-only ops) that Anvil does not implement; "failed" means it ran and gave a
        wrong result or an error.

        | op | passed | failed | unsupported |
        |---|---:|---:|---:|

        """
        for (op, e) in byOp.sorted(by: { $0.key < $1.key }) {
            md += "| \(op) | \(e.pass) | \(e.fail) | \(e.unsupported) |\n"
        }
        try md.write(toFile: path, atomically: true, encoding: .utf8)
    }
}
