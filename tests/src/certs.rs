//! Certificates for tests, made with the `openssl` command-line tool: a CA of a test's own and
//! the certificates it signs, for a server's names and addresses.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate authority: its certificate (PEM) and key, in a directory of the test's.
pub struct Ca {
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

fn openssl(args: &[&str], what: &str) {
    let out =
        Command::new("openssl").args(args).output().unwrap_or_else(|e| panic!("cannot run openssl ({what}): {e}"));
    assert!(out.status.success(), "openssl {what}: {}", String::from_utf8_lossy(&out.stderr));
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

impl Ca {
    /// A new CA named `name` (EC P-256, valid two days), its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        fs::create_dir_all(dir).expect("create the certificates' directory");
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&cert),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            "make a CA",
        );
        Ca { cert, key, dir: dir.to_path_buf() }
    }

    /// A server certificate named `name`, signed by this CA, for `sans` (as openssl writes
    /// them: `IP:127.0.0.1`, `DNS:localhost`): the certificate's and the key's paths.
    pub fn sign(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key, csr, ext) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
            self.dir.join(format!("{name}.csr")),
            self.dir.join(format!("{name}.ext")),
        );
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
            ],
            "make a key and a signing request",
        );
        let extensions = format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        );
        fs::write(&ext, extensions).expect("write the extensions");
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&self.cert),
                "-CAkey",
                path_str(&self.key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                path_str(&ext),
                "-out",
                path_str(&cert),
            ],
            "sign a certificate",
        );
        (cert, key)
    }
}
