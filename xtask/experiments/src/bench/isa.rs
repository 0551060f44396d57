//! `cargo xtask bench --isa`: both sides of the comparison on one instruction set. Ours
//! through `tulip_models::set_cpu_isa` (in the case's process); PyTorch's through the
//! variables its three CPU libraries read (ATen's kernels, oneDNN's convolutions, MKL's
//! BLAS), each read back from a probe run rather than assumed.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tulip_models::CpuIsa;

/// The environment that caps PyTorch at `isa` (none for `native`).
pub(crate) fn torch_env(isa: CpuIsa) -> Vec<(&'static str, &'static str)> {
    let (aten, onednn, mkl) = match isa {
        CpuIsa::Native => return Vec::new(),
        CpuIsa::Avx512 => ("avx512", "AVX512_CORE", "AVX512"),
        CpuIsa::Avx2 => ("avx2", "AVX2", "AVX2"),
        CpuIsa::Scalar => ("default", "SSE41", "SSE4_2"),
    };
    vec![
        ("ATEN_CPU_CAPABILITY", aten),
        ("ONEDNN_MAX_CPU_ISA", onednn),
        ("MKL_ENABLE_INSTRUCTIONS", mkl),
    ]
}

/// What PyTorch's libraries said they run with, from one probe.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TorchIsa {
    /// `torch.backends.cpu.get_cpu_capability()`: `AVX512`, `AVX2`, `DEFAULT`, ….
    pub aten: String,
    /// oneDNN's `isa:` line, e.g. `Intel AVX2`.
    pub onednn: Option<String>,
    /// The implementation oneDNN chose for the probe's convolution, e.g. `jit:avx2`.
    pub onednn_convolution: Option<String>,
    /// MKL's version line (MKL names its instruction set there on Intel CPUs only).
    pub mkl: Option<String>,
}

impl TorchIsa {
    /// Reads the probe's output: its `PROBE {json}` line and the verbose lines of oneDNN
    /// (`ONEDNN_VERBOSE=1`) and MKL (`MKL_VERBOSE=1`).
    pub(crate) fn parse(stdout: &str) -> Result<Self> {
        let probe = stdout
            .lines()
            .find_map(|l| l.strip_prefix("PROBE "))
            .context("the PyTorch probe printed no PROBE line")?;
        let probe: Value = serde_json::from_str(probe).context("unreadable PROBE line")?;
        let aten = probe["aten_cpu_capability"]
            .as_str()
            .context("the PROBE line has no aten_cpu_capability")?
            .to_string();
        let onednn = stdout
            .lines()
            .filter(|l| l.starts_with("onednn_verbose") && l.contains(",cpu,"))
            .find_map(|l| l.split_once("isa:"))
            .map(|(_, isa)| isa.trim().to_string());
        let onednn_convolution = stdout
            .lines()
            .filter(|l| l.contains(",exec,cpu,convolution,"))
            .find_map(|l| l.split(',').nth(6))
            .map(str::to_string);
        let mkl = stdout
            .lines()
            .find(|l| l.starts_with("MKL_VERBOSE") && l.contains("oneMKL"))
            .map(|l| l.trim_start_matches("MKL_VERBOSE").trim().to_string());
        Ok(Self {
            aten,
            onednn,
            onednn_convolution,
            mkl,
        })
    }

    /// An error unless ATen and oneDNN run `isa` (MKL cannot be checked on every CPU,
    /// and runs only the linear head's matrix products in these models).
    pub(crate) fn check(&self, isa: CpuIsa) -> Result<()> {
        let (aten, onednn, convolution): (&str, &[&str], &str) = match isa {
            CpuIsa::Native => return Ok(()),
            CpuIsa::Avx512 => ("AVX512", &["AVX-512"], "avx512"),
            CpuIsa::Avx2 => ("AVX2", &["AVX2"], "avx2"),
            CpuIsa::Scalar => ("DEFAULT", &["SSE4.1", "SSE41"], "sse41"),
        };
        let onednn_isa = self.onednn.as_deref().unwrap_or("(no isa line)");
        let onednn_convolution = self.onednn_convolution.as_deref().unwrap_or("(none)");
        if !self.aten.eq_ignore_ascii_case(aten) {
            bail!(
                "PyTorch ignored ATEN_CPU_CAPABILITY: asked for {aten}, it reports {}",
                self.aten
            );
        }
        // "Intel AVX2" must not be read as AVX-512's "… AVX2 …" and vice versa: the
        // AVX-512 line names AVX-512, the AVX2 one does not.
        let says_avx512 = onednn_isa.contains("AVX-512");
        let ok = onednn.iter().any(|name| onednn_isa.contains(name))
            && (isa == CpuIsa::Avx512 || !says_avx512)
            && onednn_convolution.contains(convolution);
        if !ok {
            bail!(
                "PyTorch's oneDNN ignored ONEDNN_MAX_CPU_ISA: asked for {isa}, it reports \
                 isa {onednn_isa:?} and ran the probe's convolution with {onednn_convolution:?}"
            );
        }
        Ok(())
    }

    /// One line for the results: what each library reported.
    pub(crate) fn describe(&self, isa: CpuIsa) -> String {
        let pins = torch_env(isa)
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect::<Vec<_>>();
        let reported = format!(
            "ATen reports {}, oneDNN {} (the probe's convolution: {}), MKL {}",
            self.aten,
            self.onednn.as_deref().unwrap_or("nothing"),
            self.onednn_convolution.as_deref().unwrap_or("none"),
            match &self.mkl {
                Some(line) if line.contains("AVX") => format!("\"{line}\""),
                Some(_) => "names no instruction set on this CPU".into(),
                None => "printed nothing".into(),
            }
        );
        if pins.is_empty() {
            format!("PyTorch unpinned: {reported}.")
        } else {
            format!("PyTorch pinned with {}: {reported}.", pins.join(", "))
        }
    }
}

/// Runs the PyTorch script's probe under `isa`'s pins with oneDNN and MKL verbose, and
/// checks that they were honoured.
pub(crate) fn probe_torch(python: &Path, script: &Path, isa: CpuIsa) -> Result<TorchIsa> {
    let out = Command::new(python)
        .arg(script)
        .arg("--probe-isa")
        .envs(torch_env(isa))
        .env("ONEDNN_VERBOSE", "1")
        .env("MKL_VERBOSE", "1")
        .output()
        .with_context(|| format!("could not run {} --probe-isa", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} --probe-isa failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let reported = TorchIsa::parse(&String::from_utf8_lossy(&out.stdout))?;
    reported.check(isa)?;
    Ok(reported)
}

/// An error naming the CPU unless it has `isa`.
pub(crate) fn require(isa: CpuIsa, cpu: &str) -> Result<()> {
    if !isa.is_available() {
        bail!(
            "--isa {isa}: this CPU ({cpu}) does not have it; it has {} (try --isa native)",
            CpuIsa::Native.resolved()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as PyTorch 2.15 with oneDNN 3.13 printed them on an AMD EPYC (Zen 4).
    const AVX2_PROBE: &str = "\
onednn_verbose,v1,info,oneDNN v3.13.3 (commit b38f97eb6f2173513112f15a0481750b8a66e901)
onednn_verbose,v1,info,cpu,runtime:OpenMP,nthr:1
onednn_verbose,v1,info,cpu,isa:Intel AVX2
onednn_verbose,v1,info,gpu,runtime:none
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0 dst:f32:p:blocked:Acdb8a::f0,attr-scratchpad:user,,16x16x3x3,0.0039
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src:f32:a:blocked:abcd::f0,alg:convolution_direct,mb2_ic16oc16_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1,1.6
MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 architecture Intel(R) Architecture processors, Lnx 2.60GHz lp64 gnu_thread
MKL_VERBOSE SGEMM(N,N,64,64,64,0x7ffd,0x5558,64,0x5558,64,0x7ffd,0x5558,64) 14.76ms CNR:OFF Dyn:1 FastMM:1 TID:0  NThr:1
PROBE {\"aten_cpu_capability\": \"AVX2\", \"torch\": \"2.15.0\"}
";

    #[test]
    fn an_avx2_probe_passes_for_avx2_and_fails_for_avx512() {
        let reported = TorchIsa::parse(AVX2_PROBE).unwrap();
        assert_eq!(reported.aten, "AVX2");
        assert_eq!(reported.onednn.as_deref(), Some("Intel AVX2"));
        assert_eq!(reported.onednn_convolution.as_deref(), Some("jit:avx2"));
        assert!(reported.check(CpuIsa::Avx2).is_ok());
        let err = reported.check(CpuIsa::Avx512).unwrap_err().to_string();
        assert!(err.contains("ATEN_CPU_CAPABILITY"), "{err}");
        assert!(reported
            .describe(CpuIsa::Avx2)
            .contains("MKL names no instruction set"));
    }

    #[test]
    fn an_ignored_onednn_pin_is_an_error() {
        // ATen honoured its variable, oneDNN did not.
        let stdout = AVX2_PROBE
            .replace("isa:Intel AVX2", "isa:Intel AVX-512 with Intel DL Boost")
            .replace("jit:avx2", "brg:avx512_core");
        let err = TorchIsa::parse(&stdout)
            .unwrap()
            .check(CpuIsa::Avx2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ONEDNN_MAX_CPU_ISA") && err.contains("AVX-512"),
            "{err}"
        );
    }

    #[test]
    fn a_probe_without_its_line_is_an_error() {
        assert!(TorchIsa::parse("onednn_verbose,v1,info,cpu,isa:Intel AVX2\n").is_err());
    }

    #[test]
    fn native_sets_no_variables_and_the_others_set_all_three() {
        assert!(torch_env(CpuIsa::Native).is_empty());
        for isa in [CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Scalar] {
            let names: Vec<_> = torch_env(isa).iter().map(|(k, _)| *k).collect();
            assert_eq!(
                names,
                [
                    "ATEN_CPU_CAPABILITY",
                    "ONEDNN_MAX_CPU_ISA",
                    "MKL_ENABLE_INSTRUCTIONS"
                ]
            );
        }
    }
}
