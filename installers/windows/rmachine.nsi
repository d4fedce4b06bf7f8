; The rmachine installer for Windows x86_64 (NSIS 3, cross-built on Linux by
; installers/windows/build.sh, which passes the defines below).
;
;   makensis -DVERSION=0.1.0 -DEXE=path\rmachine.exe -DOUTFILE=rmachine-0.1.0-setup.exe rmachine.nsi
;   (optional: -DDESKTOP_EXE=path\rmachine-desktop.exe)
;
; Installs for all users under Program Files: rmachine.exe (and the desktop app when
; given), rmachine on the system PATH, a Start menu folder, an entry in Apps & features,
; and an uninstaller. Silent: `setup.exe /S` and `uninstall.exe /S`. The uninstaller
; removes what the installer added and nothing else: machines, their disks and images
; live in each user's %LOCALAPPDATA%\rmachine and stay (`rmachine rm` deletes a machine).

; A 64-bit installer: rmachine is x86_64 only, and a 32-bit one would need WOW64 (and
; wine's 32-bit half, which the CI's wine64 lacks).
Target amd64-unicode
!include "LogicLib.nsh"
!include "WinMessages.nsh"
!include "StrFunc.nsh"
!include "x64.nsh"
${StrStr}
${UnStrRep}

!ifndef VERSION
  !error "VERSION is not defined (build.sh passes -DVERSION=...)"
!endif
!ifndef EXE
  !error "EXE is not defined (build.sh passes -DEXE=path\rmachine.exe)"
!endif
!ifndef OUTFILE
  !define OUTFILE "rmachine-${VERSION}-setup.exe"
!endif

!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\rmachine"
!define ENV_KEY "SYSTEM\CurrentControlSet\Control\Session Manager\Environment"

Name "rmachine ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\rmachine"
RequestExecutionLevel admin
SetCompressor /SOLID lzma
ShowInstDetails show
ShowUninstDetails show

Page directory
Page instfiles
UninstPage uninstConfirm
UninstPage instfiles

Function .onInit
  ${IfNot} ${RunningX64}
    MessageBox MB_OK|MB_ICONSTOP "rmachine needs 64-bit Windows (x86_64)." /SD IDOK
    Abort
  ${EndIf}
  SetRegView 64
FunctionEnd

Function un.onInit
  SetRegView 64
FunctionEnd

Section "rmachine"
  SetShellVarContext all
  SetOutPath "$INSTDIR"
  File "/oname=rmachine.exe" "${EXE}"
!ifdef DESKTOP_EXE
  File "/oname=rmachine-desktop.exe" "${DESKTOP_EXE}"
!endif
  WriteUninstaller "$INSTDIR\uninstall.exe"

  ; The CLI on the system PATH, once.
  ReadRegStr $0 HKLM "${ENV_KEY}" "Path"
  ${StrStr} $1 "$0;" "$INSTDIR;"
  ${If} $1 == ""
    ${If} $0 == ""
      WriteRegExpandStr HKLM "${ENV_KEY}" "Path" "$INSTDIR"
    ${Else}
      WriteRegExpandStr HKLM "${ENV_KEY}" "Path" "$0;$INSTDIR"
    ${EndIf}
    SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=5000
  ${EndIf}

  ; Start menu.
  CreateDirectory "$SMPROGRAMS\rmachine"
!ifdef DESKTOP_EXE
  CreateShortCut "$SMPROGRAMS\rmachine\rmachine.lnk" "$INSTDIR\rmachine-desktop.exe"
!else
  ; Without the desktop app: a command prompt where `rmachine` and `docker` work.
  CreateShortCut "$SMPROGRAMS\rmachine\rmachine command prompt.lnk" "$SYSDIR\cmd.exe" '/k "$INSTDIR\rmachine.exe" --help'
!endif
  CreateShortCut "$SMPROGRAMS\rmachine\Uninstall rmachine.lnk" "$INSTDIR\uninstall.exe"

  ; Apps & features.
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayName" "rmachine"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "Publisher" "rmachine"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoRepair" 1

  ; What the qemu driver needs and the installer does not carry: say so.
  SearchPath $2 "qemu-system-x86_64.exe"
  ${If} $2 == ""
    DetailPrint "QEMU for Windows was not found on PATH: rmachine's machines need it."
    MessageBox MB_OK|MB_ICONINFORMATION "rmachine is installed.$\r$\n$\r$\nIts machines run under QEMU for Windows, which was not found on PATH: install it (qemu.org, or winget install SoftwareFreedomConservancy.QEMU) and add its folder to PATH. For hardware acceleration, turn on the Windows feature $\"Windows Hypervisor Platform$\".$\r$\n$\r$\nThen, in a new terminal: rmachine start" /SD IDOK
  ${Else}
    DetailPrint "QEMU found: $2"
  ${EndIf}
SectionEnd

Section "Uninstall"
  SetShellVarContext all
  ; Off the PATH: the entry as the installer wrote it, wherever it sits.
  ReadRegStr $0 HKLM "${ENV_KEY}" "Path"
  ${UnStrRep} $1 "$0" ";$INSTDIR" ""
  ${UnStrRep} $1 "$1" "$INSTDIR;" ""
  ${If} $1 == "$INSTDIR"
    StrCpy $1 ""
  ${EndIf}
  ${If} $1 != $0
    WriteRegExpandStr HKLM "${ENV_KEY}" "Path" "$1"
    SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=5000
  ${EndIf}

  Delete "$SMPROGRAMS\rmachine\*.lnk"
  RMDir "$SMPROGRAMS\rmachine"
  Delete "$INSTDIR\rmachine.exe"
  Delete "$INSTDIR\rmachine-desktop.exe"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegKey HKLM "${UNINSTALL_KEY}"
SectionEnd
